"""Fleets: inventory connection variables checked before ssh sees them, one merged view, controller
forwards reserved, recorded and closed exactly, requests routed across the view."""

import ipaddress
import json
import os
import socket
import subprocess
import sys
import signal
import threading
import time
import uuid

import pytest

from ansible_collections.tao.inference.plugins.module_utils import fleet, procs, readiness, ssh
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry, is_this_machine, this_machine


def jid(name):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


# -- ansible_ssh_common_args ---------------------------------------------------------------------
def test_common_args_keep_safe_options_word_by_word():
    argv = fleet.common_args("-o StrictHostKeyChecking=no -o 'UserKnownHostsFile=/dev/null' -oConnectTimeout=5 "
                             "-i /keys/id -p 2200 -J admin@bastion:2222 -4")
    assert argv == ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                    "-o", "IdentityFile=/keys/id", "-p", "2200", "-J", "admin@bastion:2222", "-4"]


@pytest.mark.parametrize("text", [
    "-o ProxyCommand=nc %h %p",
    "-o 'ProxyCommand sh -c id'",
    "-oLocalCommand=touch /tmp/x",
    "-o PermitLocalCommand=yes",
    "-o ControlPath=/tmp/shared",
    "-o ForwardAgent=yes",
    "-o Include=/etc/evil",
    "-F /tmp/config",
    "-R 9000:localhost:22",
    "-D 1080",
    "-L 1:2:3",
    "--",
    "host",
    "$(id)",
    "-o UserKnownHostsFile=-oProxyCommand=id",
    "-p -1",
    "-J -oProxyCommand=id",
    "-J a@b;id",
    "-o StrictHostKeyChecking",
    "-i relative/key",
    "-o 'LogLevel=ERROR\nProxyCommand=x'",
    "-o 'Ciphers=aes128-ctr aes256-ctr'",
    "-o 'unterminated",
])
def test_common_args_refuse_what_could_run_a_command_or_widen_the_connection(text):
    with pytest.raises(TaoInferenceError):
        fleet.common_args(text)


def test_refusal_says_what_is_taken():
    with pytest.raises(TaoInferenceError) as err:
        fleet.common_args("-o ProxyCommand=nc")
    assert "ProxyCommand" in err.value.msg and "proxyjump" in err.value.msg and "-J" in err.value.msg


@pytest.mark.parametrize("field,value", [
    ("ansible_host", "-oProxyCommand=id"), ("ansible_host", "a b"), ("ansible_host", "h\nx"),
    ("ansible_user", "-l"), ("ansible_user", "root;id"), ("ansible_port", "22; id"), ("ansible_port", 0),
    ("ansible_ssh_private_key_file", "-i"), ("ansible_ssh_private_key_file", "keys/id"),
    ("ansible_ssh_private_key_file", "/k\n"),
])
def test_inventory_variables_refused_before_any_ssh(field, value):
    with pytest.raises(TaoInferenceError):
        fleet.InventoryHost.from_dict({"inventory_host": "gpu1", field: value})


def test_inventory_host_target_argv_puts_destination_after_double_dash():
    where = fleet.InventoryHost.from_dict({"inventory_host": "gpu1", "ansible_host": "10.9.0.2", "ansible_user": "ops",
                                           "ansible_port": "2201", "ansible_ssh_private_key_file": "/k/id",
                                           "ansible_ssh_common_args": "-o StrictHostKeyChecking=no"})
    argv = where.target().argv("true")
    assert argv[argv.index("--") + 1] == "ops@10.9.0.2"
    assert ["-p", "2201"] == argv[argv.index("-p"):argv.index("-p") + 2]
    assert "StrictHostKeyChecking=no" in argv and "BatchMode=yes" in argv
    # BatchMode comes first: ssh keeps the first value of an option, so the inventory cannot turn it off.
    assert argv.index("BatchMode=yes") < argv.index("StrictHostKeyChecking=no")


# -- the view ------------------------------------------------------------------------------------
def item(name, arch="cosmos-rl", port=8080, state="running", ready=True, machine="m1", bind=None, url=None):
    return {"job_id": jid(name), "name": name, "network_arch": arch, "platform": "local-docker",
            "host_url": url or "http://localhost:%d" % port, "platform_status": {"state": state},
            "ready": ready, "readiness": {"reason": "ready" if ready else "model_loading"}, "machine": machine,
            "started_at": "2026-01-01T00:00:00Z",
            "shape": {"platform_options": {"bind_address": bind or "127.0.0.1"}}}


def test_merge_lists_every_service_and_unreachable_hosts():
    rows, unreachable = fleet.merge([
        {"inventory_host": "gpu1", "services": [item("a"), item("b", port=8081)]},
        {"inventory_host": "gpu2", "reachable": False, "error": "Failed to connect\nto the host via ssh"},
        {"inventory_host": "gpu3", "services": []},
    ])
    assert [(r["host"], r["name"], r["state"]) for r in rows] == [
        ("gpu1", "a", "running"), ("gpu1", "b", "running"), ("gpu2", None, "unreachable")]
    assert unreachable == ["gpu2"] and rows[2]["readiness"] == "Failed to connect to the host via ssh"


def test_merge_shows_a_shared_registrys_service_once_from_its_own_machine():
    shared = item("s", machine="m2")
    elsewhere = dict(shared, platform_status={"state": "elsewhere"})
    rows = fleet.merge([{"inventory_host": "gpu1", "services": [elsewhere]},
                        {"inventory_host": "gpu2", "services": [shared]}])[0]
    assert [(r["host"], r["state"]) for r in rows] == [("gpu2", "running")]


@pytest.mark.parametrize("bad", [
    {"job_id": "x"}, dict(item("a"), network_arch="evil"), dict(item("a"), host_url="http://-o:1"),
    dict(item("a"), name="$(id)"), dict(item("a"), host_url="file:///etc/passwd"),
    dict(item("a"), endpoint_auth={"scheme": "bearer", "source": "$(id)", "binding": "0" * 64}),
    dict(item("a"), endpoint_auth="Bearer abc"),
])
def test_merge_refuses_rows_a_host_could_have_forged(bad):
    """The host that published it is one error row (none of its services used); the other hosts stay in view."""
    rows, unreachable = fleet.merge([{"inventory_host": "gpu1", "services": [item("ok1"), bad]},
                                     {"inventory_host": "gpu2", "services": [item("b", machine="m2")]}])
    assert [(r["host"], r["state"], r["job_id"]) for r in rows] == [("gpu1", "error", None), ("gpu2", "running", jid("b"))]
    assert "cannot be used" in rows[0]["readiness"] and unreachable == []
    assert fleet.checked_view(rows) == [rows[1]]


def test_a_job_id_two_machines_claim_is_routed_to_neither():
    """A host that copies (or forges) another's entry cannot take its requests: both claims become one error row
    naming both hosts, whichever came first; the same machine listed twice (inventory aliases) is no conflict."""
    real, forged = item("a", machine="m1"), item("a", machine="evil", port=9999)
    for order in ([("gpu1", real), ("gpu2", forged)], [("gpu2", forged), ("gpu1", real)]):
        rows = fleet.merge([{"inventory_host": host, "services": [it]} for host, it in order])[0]
        assert len(rows) == 1 and rows[0]["state"] == "error" and rows[0]["job_id"] == jid("a")
        assert "gpu1" in rows[0]["readiness"] and "gpu2" in rows[0]["readiness"]
        with pytest.raises(TaoInferenceError):
            fleet.pick(fleet.checked_view(rows), job_id=jid("a"))
    local = {"ansible_connection": "local"}
    aliases = fleet.merge([{"inventory_host": "svc1", "services": [real], "connection": local},
                           {"inventory_host": "svc2", "services": [real], "connection": local}])
    assert [(r["host"], r["state"]) for r in aliases[0]] == [("svc1", "running")]
    # Naming the real host's machine does not make a forged claim an alias: it is reached somewhere else.
    copied = fleet.merge([{"inventory_host": "evil", "services": [dict(forged, machine="m1")],
                           "connection": {"ansible_host": "10.9.0.66"}},
                          {"inventory_host": "gpu1", "services": [real], "connection": {"ansible_host": "10.9.0.2"}}])[0]
    assert len(copied) == 1 and copied[0]["state"] == "error" and copied[0]["job_id"] == jid("a")


def test_a_host_given_twice_is_refused():
    with pytest.raises(TaoInferenceError, match="given twice"):
        fleet.merge([{"inventory_host": "gpu1", "services": []}, {"inventory_host": "gpu1", "services": []}])


def test_a_bind_address_that_is_no_host_makes_the_host_an_error_row():
    rows = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", bind="127.0.0.1/")]}])[0]
    assert rows[0]["state"] == "error" and "bind_address" in rows[0]["readiness"]
    # A host name is one (Brev's brev_bind_address may be a name): the service is listed.
    named = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", bind="inst-1.internal")]}])[0]
    assert named[0]["state"] == "running" and named[0]["bind_address"] == "inst-1.internal"


def test_a_hosts_url_at_one_of_the_controllers_own_addresses_is_not_used_directly():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # nothing is sent: this only picks the address a route would use
            mine = probe.getsockname()[0]
    except OSError:
        pytest.skip("this machine has no route, so no address of its own to try")
    assert fleet._mine(ipaddress.ip_address(mine)) and not ipaddress.ip_address(mine).is_loopback
    remote = fleet.InventoryHost.from_dict({"inventory_host": "gpu1", "ansible_host": "10.9.0.2"})
    row = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", url="http://%s:8085" % mine)]}])[0][0]
    assert fleet.direct_url(row, remote) is None


def test_a_name_that_does_not_answer_in_time_is_not_used_directly(monkeypatch):
    gate = threading.Event()

    def stuck(*_args, **_kwargs):
        gate.wait(10)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    monkeypatch.setattr(fleet.Resolver, "PER_NAME", 0.2)
    try:
        resolver = fleet.Resolver(budget=0.5)
        remote = fleet.InventoryHost.from_dict({"inventory_host": "gpu1", "ansible_host": "10.9.0.2"})
        row = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", url="http://slow.example:8085")]}])[0][0]
        assert fleet.direct_url(row, remote, resolver) is None
        assert resolver.addresses("slow.example") is None  # asked once: the answer is kept
    finally:
        gate.set()


def test_direct_urls():
    remote = fleet.InventoryHost.from_dict({"inventory_host": "gpu1", "ansible_host": "10.9.0.2"})
    local = fleet.InventoryHost.from_dict({"inventory_host": "ctl", "ansible_connection": "local"})
    row = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", port=8085)]}])[0][0]
    assert fleet.direct_url(row, remote) is None  # loopback on the host: a forward is needed
    assert fleet.direct_url(row, local) == "http://localhost:8085"
    wide = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", port=8085, bind="0.0.0.0")]}])[0][0]
    assert fleet.direct_url(wide, remote) == "http://10.9.0.2:8085"
    one = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", port=8085, bind="10.9.0.7")]}])[0][0]
    assert fleet.direct_url(one, remote) == "http://10.9.0.7:8085"
    lb = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", url="http://lb.example:80")]}])[0][0]
    assert fleet.direct_url(lb, remote) == "http://lb.example:80"


# -- forwards ------------------------------------------------------------------------------------
@pytest.fixture
def fake_ssh(tmp_path):
    """An ``ssh -N -L spec`` stand-in process that listens on the forward's local port, so the
    forward's checks (argv, listener, owner) are the real ones."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "ssh"
    code = ("import socket, sys, time\nspec = sys.argv[sys.argv.index('-L') + 1]\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('127.0.0.1', int(spec.split(':')[1]))); s.listen(1)\ntime.sleep(600)\n")
    script.write_text("#!/bin/bash\nexec -a ssh %s -c \"%s\" \"$@\"\n" % (sys.executable, code))
    script.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = "%s:%s" % (folder, old)
    yield
    os.environ["PATH"] = old


def view_of(registry, hosts, **kwargs):
    return fleet.view(registry, hosts, **kwargs)


def hosts_with(*items, **conn):
    return [{"inventory_host": "gpu1", "services": list(items),
             "connection": dict({"ansible_host": "10.9.0.2", "ansible_user": "root"}, **conn)}]


def test_forward_opened_recorded_kept_and_closed(tmp_path, fake_ssh):
    registry = Registry(str(tmp_path / "reg.json"))
    first = view_of(registry, hosts_with(item("a")))
    url = first["services"][0]["controller_url"]
    assert first["changed"] and first["opened"] == [jid("a")] and url.startswith("http://127.0.0.1:")
    record = registry.read().forwards()[jid("a")]
    assert record["ssh_host"] == "10.9.0.2" and record["remote_port"] == 8080 and record["pid"]
    assert fleet.forward_alive(record)
    # The seed's tooling takes every top-level object for an entry: the forwards are a list.
    data = json.loads((tmp_path / "reg.json").read_text())
    assert isinstance(data["forwards"], list)
    again = view_of(registry, hosts_with(item("a")))
    assert not again["changed"] and again["services"][0]["controller_url"] == url
    # The host no longer lists it: its forward is closed, exactly that process.
    gone = view_of(registry, hosts_with())
    assert gone["closed"] == [jid("a")] and not registry.read().forwards()
    assert not fleet.forward_alive(record)


def test_dead_forward_is_replaced_and_stop_closes(tmp_path, fake_ssh):
    registry = Registry(str(tmp_path / "reg.json"))
    view_of(registry, hosts_with(item("a")))
    record = registry.read().forwards()[jid("a")]
    fleet.close_forward(record)
    again = view_of(registry, hosts_with(item("a")))
    assert again["opened"] == [jid("a")] and registry.read().forwards()[jid("a")]["pid"] != record["pid"]
    assert fleet.close_forwards(registry, [jid("a"), jid("nothing")]) == [jid("a")]
    assert registry.read().forwards() == {}


def test_forward_ports_never_collide_with_each_other(tmp_path, fake_ssh):
    registry = Registry(str(tmp_path / "reg.json"))
    result = view_of(registry, hosts_with(item("a"), item("b", port=8081), item("c", port=8082)))
    ports = [r["controller_url"] for r in result["services"]]
    assert len(set(ports)) == 3
    fleet.close_forwards(registry, [jid("a"), jid("b"), jid("c")])


def test_failed_forward_leaves_no_reservation_and_is_reported(tmp_path):
    registry = Registry(str(tmp_path / "reg.json"))

    def refuse(*_args):
        raise TaoInferenceError("the SSH tunnel failed (exit 255): Connection refused")

    result = fleet.view(registry, hosts_with(item("a")), opener=refuse)
    assert result["errors"][0]["job_id"] == jid("a") and "Connection refused" in result["errors"][0]["error"]
    assert result["services"][0]["controller_url"] is None and registry.read().forwards() == {}


def test_check_mode_opens_nothing(tmp_path):
    registry = Registry(str(tmp_path / "reg.json"), check_mode=True)

    def refuse(*_args):
        pytest.fail("opened in check mode")

    result = fleet.view(registry, hosts_with(item("a")), check_mode=True, opener=refuse)
    assert result["opened"] == [jid("a")] and not os.path.exists(str(tmp_path / "reg.json"))


def test_not_running_and_local_services_get_no_forward(tmp_path):
    registry = Registry(str(tmp_path / "reg.json"))

    def never(*_args):
        pytest.fail("no forward was needed")

    result = fleet.view(registry, hosts_with(item("a", state="exited")), opener=never)
    assert result["services"][0]["controller_url"] is None
    local = [{"inventory_host": "ctl", "services": [item("b")], "connection": {"ansible_connection": "local"}}]
    assert fleet.view(registry, local, opener=never)["services"][0]["controller_url"] == "http://localhost:8080"


def test_forged_forward_record_is_never_acted_on(tmp_path):
    path = tmp_path / "reg.json"
    # A planted record naming some other process (pid 1) with an ssh host that is an option.
    path.write_text(json.dumps({"forwards": [{"job_id": jid("a"), "inventory_host": "gpu1", "local_port": 8080,
                                              "remote_host": "127.0.0.1", "remote_port": 8080, "pid": 1,
                                              "start_time": "1", "ssh_host": "-oProxyCommand=id"}]}))
    os.chmod(str(path), 0o600)
    registry = Registry(str(path))
    assert registry.read().forwards() == {}
    assert fleet.close_forwards(registry, [jid("a")]) == []
    assert json.loads(path.read_text())["forwards"][0]["pid"] == 1  # kept, never dropped


def test_a_real_pid_is_not_closed_unless_it_is_our_exact_forward(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        from ansible_collections.tao.inference.plugins.module_utils import procs

        record = {"inventory_host": "gpu1", "local_port": 9, "remote_host": "127.0.0.1", "remote_port": 8080,
                  "pid": sleeper.pid, "start_time": procs.stat_of(sleeper.pid)[1], "ssh_host": "10.9.0.2"}
        assert not fleet.close_forward(record)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# -- the machine rule ----------------------------------------------------------------------------
def test_is_this_machine():
    assert is_this_machine({"machine": socket.gethostname()}) and this_machine() == socket.gethostname()
    assert not is_this_machine({"machine": "another-machine"})
    assert is_this_machine({})


# -- routing across the view ---------------------------------------------------------------------
def rows_of(*hosts):
    rows = fleet.merge([{"inventory_host": h, "services": s} for h, s in hosts])[0]
    for row in rows:
        row["controller_url"] = "http://127.0.0.1:%d" % (9000 + rows.index(row)) if row["state"] == "running" else None
    return fleet.checked_view(rows)


def test_pick_by_job_id_name_arch_and_ambiguity_names_every_host():
    rows = rows_of(("gpu1", [item("a"), item("d", arch="tao-dataservices")]), ("gpu2", [item("b")]))
    assert fleet.pick(rows, job_id=jid("b"))["host"] == "gpu2"
    assert fleet.pick(rows, name="a")["host"] == "gpu1"
    assert fleet.pick(rows, network_arch="tao-dataservices")["name"] == "d"
    with pytest.raises(TaoInferenceError) as err:
        fleet.pick(rows, network_arch="cosmos-rl")
    assert "on gpu1" in err.value.msg and "on gpu2" in err.value.msg and len(err.value.details["candidates"]) == 2
    with pytest.raises(TaoInferenceError) as err:
        fleet.pick(rows, job_id=jid("zzz"))
    assert "gpu1" in err.value.msg


def test_pick_refuses_a_service_that_cannot_take_requests():
    rows = rows_of(("gpu1", [item("a", state="exited")]))
    with pytest.raises(TaoInferenceError) as err:
        fleet.pick(rows, name="a")
    assert "status playbook" in err.value.msg


def test_spread_targets_every_running_service_of_the_arch():
    rows = rows_of(("gpu1", [item("a"), item("x", state="exited")]), ("gpu2", [item("b"), item("d", arch="tao-dataservices")]))
    assert sorted(r["name"] for r in fleet.spread_targets(rows, "cosmos-rl")) == ["a", "b"]
    with pytest.raises(TaoInferenceError):
        fleet.spread_targets(rows, "cosmos-predict2.5")


def test_checked_view_refuses_forged_rows():
    for bad in ({"host": "h", "job_id": "x", "network_arch": "cosmos-rl"},
                {"host": "h", "job_id": jid("a"), "network_arch": "cosmos-rl", "controller_url": "http://$(id):1"},
                "text"):
        with pytest.raises(TaoInferenceError):
            fleet.checked_view([bad])
    assert fleet.checked_view([{"host": "h", "state": "unreachable", "job_id": None}]) == []


LEPTON_URL = "https://ep.example.lepton.run"


def lepton_row(token="endpoint-token-1", source="LEPTON_ENDPOINT_TOKEN", **changes):
    url = LEPTON_URL
    item_ = dict(item("l"), platform="lepton", host_url=url,
                 endpoint_auth=readiness.endpoint_auth(jid("l"), url, source, token))
    row = fleet.merge([{"inventory_host": "gpu1", "services": [item_]}])[0][0]
    row["controller_url"] = url
    row.update(changes)
    return row


def test_a_lepton_rows_token_goes_only_to_the_url_its_binding_names():
    row = lepton_row()
    assert row["endpoint_auth"]["source"] == "LEPTON_ENDPOINT_TOKEN" and "endpoint-token-1" not in repr(row)
    assert fleet.endpoint_headers(fleet.checked_view([row])[0], {"LEPTON_ENDPOINT_TOKEN": "endpoint-token-1"}) == {
        "Authorization": "Bearer endpoint-token-1"}
    assert fleet.endpoint_headers(dict(row, endpoint_auth=None), {"LEPTON_ENDPOINT_TOKEN": "x" * 8}) == {}
    refusals = [
        (row, {}, "export LEPTON_ENDPOINT_TOKEN"),
        (row, {"LEPTON_ENDPOINT_TOKEN": "another-token"}, "is not the one service"),
        (row, {"LEPTON_ENDPOINT_TOKEN": "another-token"}, "fleet row may have been forged or edited: build the view"),
        (dict(row, controller_url="http://127.0.0.1:9000"), {"LEPTON_ENDPOINT_TOKEN": "endpoint-token-1"},
         "the token goes only to the URL it is bound to"),
        (dict(row, forwarded=True), {"LEPTON_ENDPOINT_TOKEN": "endpoint-token-1"},
         "the controller reaches it through a forward"),
        (dict((k, v) for k, v in row.items() if k != "forwarded"), {"LEPTON_ENDPOINT_TOKEN": "endpoint-token-1"},
         "does not say it is reached without a forward"),
        (dict(row, forwarded="no"), {"LEPTON_ENDPOINT_TOKEN": "endpoint-token-1"},
         "does not say it is reached without a forward"),
        (dict(row, host_url="https://evil.example", controller_url="https://evil.example"),
         {"LEPTON_ENDPOINT_TOKEN": "endpoint-token-1"}, "is not the one service"),
        (dict(row, platform="local-docker"), {"LEPTON_ENDPOINT_TOKEN": "endpoint-token-1"}, "never gives an endpoint"),
        (lepton_row(source="HOME"), {"HOME": "endpoint-token-1"}, "never gives an endpoint"),
    ]
    for bad, environ, why in refusals:
        with pytest.raises(TaoInferenceError) as err:
            fleet.endpoint_headers(bad, environ)
        assert why in err.value.msg and "endpoint-token-1" not in err.value.msg


def test_checked_view_refuses_a_malformed_endpoint_auth():
    for bad in ({"scheme": "bearer"}, "Bearer abc", dict(lepton_row()["endpoint_auth"], binding="zz")):
        with pytest.raises(TaoInferenceError) as err:
            fleet.checked_view([lepton_row(endpoint_auth=bad)])
        assert "endpoint_auth" in err.value.msg


def test_table_has_a_header_and_a_line_per_row():
    rows = fleet.merge([{"inventory_host": "gpu1", "services": [item("a")]},
                        {"inventory_host": "gpu2", "reachable": False, "error": "no route"}])[0]
    lines = fleet.table(rows)
    assert lines[0].split() == ["HOST", "JOB_ID", "NAME", "ARCH", "STATE", "READY", "CONTROLLER_URL"]
    assert lines[1].split()[:6] == ["gpu1", jid("a"), "a", "cosmos-rl", "running", "yes"]
    assert lines[2].split()[:5] == ["gpu2", "-", "-", "-", "unreachable"] and lines[2].endswith("no route")


def test_a_host_whose_registry_cannot_be_read_is_an_error_row_not_unreachable():
    rows, unreachable = fleet.merge([{"inventory_host": "gpu1", "reachable": True,
                                      "error": "the registry /x is not valid JSON"}])
    assert rows[0]["state"] == "error" and "not valid JSON" in rows[0]["readiness"] and unreachable == []
    assert fleet.checked_view(rows) == []


def test_one_hosts_bad_connection_variables_do_not_hide_the_others(tmp_path, fake_ssh):
    registry = Registry(str(tmp_path / "reg.json"))
    hosts = hosts_with(item("a")) + [{"inventory_host": "gpu2", "services": [item("b")],
                                      "connection": {"ansible_host": "10.9.0.3",
                                                     "ansible_ssh_common_args": "-o ProxyCommand=nc %h %p"}}]
    result = fleet.view(registry, hosts)
    rows = dict((r["host"], r) for r in result["services"])
    assert rows["gpu1"]["controller_url"].startswith("http://127.0.0.1:")
    assert rows["gpu2"]["controller_url"] is None and rows["gpu2"]["state"] == "running"
    assert result["errors"][0]["host"] == "gpu2" and "ProxyCommand" in result["errors"][0]["error"]
    assert list(registry.read().forwards()) == [jid("a")]
    fleet.close_forwards(registry, [jid("a")])


def test_a_forward_another_run_is_opening_is_left_to_it(tmp_path, fake_ssh):
    from ansible_collections.tao.inference.plugins.module_utils import procs

    registry = Registry(str(tmp_path / "reg.json"))
    sleeper = subprocess.Popen(["sleep", "60"])  # the other run, still at work
    try:
        with registry.transaction() as state:
            state.put_forward(jid("a"), {"inventory_host": "gpu1", "local_port": 8099, "remote_host": "127.0.0.1",
                                         "remote_port": 8080, "ssh_host": "10.9.0.2", "owner_pid": sleeper.pid,
                                         "owner_start_time": procs.stat_of(sleeper.pid)[1]})
        result = fleet.view(registry, hosts_with(item("a")))
        assert "opening the forward" in result["errors"][0]["error"] and result["opened"] == []
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its run is gone: the reservation is stale and replaced.
    result = fleet.view(registry, hosts_with(item("a")))
    assert result["opened"] == [jid("a")] and registry.read().forwards()[jid("a")]["pid"]
    fleet.close_forwards(registry, [jid("a")])


def test_a_hosts_stop_closes_only_forwards_to_that_host(tmp_path, fake_ssh):
    registry = Registry(str(tmp_path / "reg.json"))
    fleet.view(registry, hosts_with(item("a")))
    assert fleet.close_forwards(registry, [jid("a")], inventory_host="gpu2") == []
    assert fleet.forward_alive(registry.read().forwards()[jid("a")])
    assert fleet.close_forwards(registry, [jid("a")], inventory_host="gpu1") == [jid("a")]


def test_a_host_whose_registry_cannot_be_read_keeps_its_forwards(tmp_path, fake_ssh):
    # Its registry was busy (a lock timeout) or unreadable: it did not say its services are gone.
    registry = Registry(str(tmp_path / "reg.json"))
    fleet.view(registry, hosts_with(item("a")))
    record = registry.read().forwards()[jid("a")]
    busy = [dict(hosts_with()[0], error="the registry lock was not free within 30 s")]
    result = fleet.view(registry, busy)
    assert result["closed"] == [] and not result["changed"]
    assert fleet.forward_alive(record) and list(registry.read().forwards()) == [jid("a")]
    fleet.close_forwards(registry, [jid("a")])


def test_a_host_that_lists_a_refused_service_keeps_its_forwards(tmp_path, fake_ssh):
    # It did not say its services are gone either: one bad entry there must not close what the controller keeps.
    registry = Registry(str(tmp_path / "reg.json"))
    fleet.view(registry, hosts_with(item("a")))
    record = registry.read().forwards()[jid("a")]
    odd = [dict(hosts_with()[0], services=[item("a"), dict(item("b"), network_arch="evil")])]
    result = fleet.view(registry, odd)
    assert result["closed"] == [] and not result["changed"] and result["services"][0]["state"] == "error"
    assert fleet.forward_alive(record) and list(registry.read().forwards()) == [jid("a")]
    fleet.close_forwards(registry, [jid("a")])


def test_two_controllers_sharing_a_registry_keep_each_others_forwards(tmp_path, fake_ssh, monkeypatch):
    # One NFS home, two controllers (login1, login2): each opens, keeps and closes its own forwards only.
    registry = Registry(str(tmp_path / "reg.json"))
    monkeypatch.setattr(socket, "gethostname", lambda: "login1")
    fleet.view(registry, hosts_with(item("a")))
    first = registry.read().forwards()[jid("a")]
    assert first["machine"] == "login1"
    monkeypatch.setattr(socket, "gethostname", lambda: "login2")
    second = fleet.view(registry, hosts_with(item("a")))
    assert second["opened"] == [jid("a")] and registry.read().forwards()[jid("a")]["pid"] != first["pid"]
    assert fleet.view(registry, hosts_with())["closed"] == [jid("a")]  # login2's own, not login1's
    assert registry.read().forwards() == {}
    monkeypatch.setattr(socket, "gethostname", lambda: "login1")
    assert fleet.forward_alive(first), "login1's forward was left running untracked"
    again = fleet.view(registry, hosts_with(item("a")))
    assert not again["changed"] and registry.read().forwards()[jid("a")]["pid"] == first["pid"]
    assert fleet.close_forwards(registry, [jid("a")]) == [jid("a")] and not fleet.forward_alive(first)


@pytest.mark.parametrize("url,bind", [
    ("http://0.0.0.0:8085", None), ("http://[::]:8085", None), ("http://0:8085", None), ("http://127.1:8085", None),
    ("http://2130706433:8085", None), ("http://0x7f000001:8085", None), ("http://[::ffff:127.0.0.1]:8085", None),
    ("http://a.localhost:8085", None), ("http://localhost.:8085", None),
    ("http://localhost:8085", "::ffff:127.0.0.1"), ("http://localhost:8085", "127.1"),
])
def test_a_hosts_url_never_sends_the_controller_to_its_own_loopback(url, bind):
    # Each of these, connected to from the controller, is the controller itself: a host's service there is
    # reached through a forward to that host, never directly (a forged row could aim at the controller's own ports).
    remote = fleet.InventoryHost.from_dict({"inventory_host": "gpu1", "ansible_host": "10.9.0.2"})
    row = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", url=url, bind=bind)]}])[0][0]
    assert fleet.direct_url(row, remote) is None


@pytest.mark.parametrize("field", ["platform_status", "readiness", "shape"])
def test_a_hosts_odd_status_fields_show_as_unknown_not_a_crash(field):
    row = fleet.merge([{"inventory_host": "gpu1", "services": [dict(item("a"), **{field: "x"})]}])[0][0]
    assert row["job_id"] == jid("a") and row["state"] in ("running", "unknown")


def test_forwards_of_many_services_open_at_once_and_one_failure_stays_its_own(tmp_path):
    """Every forward a view needs is being opened at the same moment (each opener waits at a barrier that only
    all of them together pass: opened one after another, the first would wait alone and fail); a refused one is
    that service's error, the others get their URL and their records."""
    registry = Registry(str(tmp_path / "reg.json"))
    names = ["a", "b", "c", "d"]
    barrier = threading.Barrier(len(names), timeout=10)
    pids = []

    def opener(_target, local_port, _host, remote_port):
        barrier.wait()
        if remote_port == 8083:
            raise TaoInferenceError("the SSH tunnel failed (exit 255): Connection refused")
        proc = subprocess.Popen(["sleep", "30"])  # a process of our own to stand for the ssh
        pids.append(proc)
        return proc.pid, procs.stat_of(proc.pid)[1]

    items = [item(name, port=8080 + index) for index, name in enumerate(names)]
    try:
        result = fleet.view(registry, hosts_with(*items), opener=opener)
        rows = dict((row["job_id"], row) for row in result["services"])
        assert result["opened"] == [jid(name) for name in names[:3]]
        assert [e["job_id"] for e in result["errors"]] == [jid("d")] and "refused" in result["errors"][0]["error"]
        assert rows[jid("d")]["controller_url"] is None
        assert len(set(rows[jid(name)]["controller_url"] for name in names[:3])) == 3
        assert sorted(registry.read().forwards()) == sorted(jid(name) for name in names[:3])
    finally:
        for proc in pids:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("answer, direct", [
    ([("127.0.0.1", 0)], False), ([("::1", 0, 0, 0)], False), ([("0.0.0.0", 0)], False),
    ([("203.0.113.7", 0), ("127.0.0.2", 0)], False),  # one loopback answer is enough
    ([("203.0.113.7", 0)], True), ([], True),
])
def test_a_name_that_leads_to_the_controllers_loopback_is_not_used_directly(monkeypatch, answer, direct):
    """A host's URL may name a load balancer or a platform's endpoint; where that name leads from the controller
    decides: a name resolving to the controller's own loopback is reached through the forward, never directly."""
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host != "svc.example":
            return real(host, *args, **kwargs)
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a[0] else socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in answer]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    remote = fleet.InventoryHost.from_dict({"inventory_host": "gpu1", "ansible_host": "10.9.0.2"})
    row = fleet.merge([{"inventory_host": "gpu1", "services": [item("a", url="http://svc.example:8085")]}])[0][0]
    assert fleet.direct_url(row, remote) == ("http://svc.example:8085" if direct else None)


def test_one_view_opens_a_bounded_number_of_forwards(tmp_path, monkeypatch):
    """A host that lists more services than a run may forward gets the rest as errors that say what to do."""
    monkeypatch.setattr(fleet, "MAX_NEW_FORWARDS", 2)
    registry = Registry(str(tmp_path / "reg.json"))
    opened = []

    def opener(_target, local_port, _host, _remote_port):
        opened.append(local_port)
        return os.getpid(), procs.stat_of(os.getpid())[1]

    result = fleet.view(registry, hosts_with(*[item(n, port=8080 + i) for i, n in enumerate("abcd")]), opener=opener)
    assert len(opened) == 2 and len(result["opened"]) == 2
    assert [e["job_id"] for e in result["errors"]] == [jid("c"), jid("d")] and "at most 2" in result["errors"][0]["error"]


def test_a_forward_whose_run_died_before_recording_its_pid_is_found_and_stopped(tmp_path, fake_ssh):
    """A run killed (SIGKILL) while its ssh came up leaves a reservation without a pid and that ssh running.
    The next view stops exactly that ssh (its -L names the reserved port) and opens a new forward; an ssh with
    another -L is left alone."""
    registry = Registry(str(tmp_path / "reg.json"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    with registry.transaction() as state:
        port = state.allocate_port(fleet.LOCAL_SCOPE, is_free=fleet.port_is_free)
        state.put_forward(jid("a"), {"inventory_host": "gpu1", "local_port": port, "remote_host": "127.0.0.1",
                                     "remote_port": 8080, "ssh_host": "10.9.0.2", "owner_pid": dead.pid,
                                     "owner_start_time": "1"})
    left = subprocess.Popen(["ssh", "-N", "-L", ssh.forward_spec(port, "127.0.0.1", 8080), "gpu1"])
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        other_port = spare.getsockname()[1]
    other = subprocess.Popen(["ssh", "-N", "-L", ssh.forward_spec(other_port, "127.0.0.1", 8080), "gpu1"])
    try:
        deadline = time.monotonic() + 10
        while not {left.pid, other.pid} <= set(pid for pid, _s, _spec in ssh.find_tunnels("127.0.0.1", 8080)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        result = view_of(registry, hosts_with(item("a")))
        assert result["opened"] == [jid("a")] and registry.read().forwards()[jid("a")]["pid"]
        assert left.wait(timeout=10) is not None  # stopped
        assert other.poll() is None  # not ours to stop
    finally:
        for proc in (left, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        fleet.close_forwards(registry, [jid("a")])


def test_an_interrupted_view_leaves_every_forward_it_began_recorded(tmp_path):
    """SIGTERM (a cancelled job) while forwards open: those under way finish and are recorded (so a stop finds
    them), those not begun are never started, and the interruption still ends the run."""
    registry = Registry(str(tmp_path / "reg.json"))
    began, release = [], threading.Event()
    procs_made = []

    def opener(_target, _local_port, _host, _remote_port):
        # The ssh it starts must be stoppable by SIGTERM: the worker does not keep the signals blocked.
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        began.append(1)
        if len(began) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the interruption arrives while this forward opens
        release.wait(5)
        proc = subprocess.Popen(["sleep", "30"])
        procs_made.append(proc)
        return proc.pid, procs.stat_of(proc.pid)[1]

    items = [item(n, port=8080 + i) for i, n in enumerate("abcdefghijkl")]
    threading.Timer(0.5, release.set).start()
    try:
        with pytest.raises(procs.Interrupted):
            with procs.interruptible():
                fleet.view(registry, hosts_with(*items), opener=opener)
        recorded = registry.read().forwards()
        assert len(recorded) == len(procs_made) == len(began) < len(items)
        assert all(record.get("pid") for record in recorded.values()), recorded
    finally:
        for proc in procs_made:
            proc.kill()
            proc.wait()
