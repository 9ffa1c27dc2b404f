"""The fleet test hosts themselves (scripts/ensure-fleet.sh, tests/hosts/fleet.py): hosts that really are
separate machines as far as Ansible and the collection can tell. Through ``ansible -i .build/fleet/inventory.ini``
and each host's own sshd: their own hostname, /tmp, home and Docker engine, the same host port published on
both at once and reached at each host's own address; a rerun changes nothing; ``--down`` leaves nothing."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

from hosts.fixtures import SCRIPT, Fleet, ensure  # pylint: disable=import-error

from .conftest import IMAGE, ROOT

BIN = os.path.dirname(sys.executable)


def ansible(fleet, module, args, limit=None, timeout=120):
    """``ansible -i <inventory> gpu -m module -a args`` (each host's result through the tree callback);
    returns {host: (ok, stdout or message)}."""
    cmd = [os.path.join(BIN, "ansible"), "-i", fleet.inventory, "gpu", "-m", module, "-a", args]
    if limit:
        cmd += ["--limit", limit]
    with tempfile.TemporaryDirectory() as tree:
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="True", PYTHONWARNINGS="ignore",
                   ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
                   ANSIBLE_CALLBACK_TREE_DIR=tree)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                              check=False)
        results = {}
        for host in os.listdir(tree):
            with open(os.path.join(tree, host), encoding="utf-8") as handle:
                result = json.load(handle)
            failed = result.get("failed") or result.get("unreachable") or result.get("rc", 0) != 0  # tree drops "failed"
            results[host] = (not failed, result.get("stdout") if "stdout" in result else result.get("msg", ""))
    assert results, "ansible left no result:\n%s\n%s" % (proc.stdout, proc.stderr)
    return results


def test_inventory_names_every_connection_detail(fleet_hosts):
    """Group gpu, one line per host with address, port, user, key, known_hosts (no host-key checking turned off)
    and the interpreter; the known_hosts file holds each host's own key."""
    with open(fleet_hosts.inventory, encoding="utf-8") as handle:
        text = handle.read()
    assert "[gpu]" in text
    for host in fleet_hosts.hosts:
        line = next(line for line in text.splitlines() if line.startswith(host["name"] + " "))
        for var in ("ansible_host=%s" % host["address"], "ansible_port=22", "ansible_user=root",
                    "ansible_ssh_private_key_file=", "ansible_ssh_common_args=", "ansible_python_interpreter="):
            assert var in line
        assert "StrictHostKeyChecking=no" not in line and "UserKnownHostsFile=%s" % fleet_hosts.known_hosts in line
    with open(fleet_hosts.known_hosts, encoding="utf-8") as handle:
        keys = dict(line.split(" ", 1) for line in handle.read().splitlines())
    assert len({keys[host["address"]] for host in fleet_hosts.hosts}) == len(fleet_hosts.hosts)


def test_each_host_has_its_own_hostname(fleet_hosts):
    results = ansible(fleet_hosts, "ansible.builtin.command", "hostname")
    names = {host: text.strip() for host, (ok, text) in results.items() if ok}
    assert sorted(names) == sorted(fleet_hosts.names), results
    assert len(set(names.values())) == len(fleet_hosts.names)
    assert socket.gethostname() not in names.values()


def test_a_host_reaches_only_this_machines_end_and_itself(fleet_hosts):
    """No default route: the other host's address and this machine's other addresses are unreachable."""
    first, second = fleet_hosts.hosts[:2]
    routes = fleet_hosts.ssh(first["name"], "ip -4 route").stdout
    assert "default" not in routes and "%s.0/24" % first["address"].rsplit(".", 1)[0] in routes
    probe = fleet_hosts.ssh(first["name"], "timeout 3 bash -c 'echo > /dev/tcp/%s/22'" % second["address"], check=False)
    assert probe.returncode != 0 and "unreachable" in probe.stderr
    assert fleet_hosts.ssh(second["name"], "hostname").stdout.strip() == second["name"]  # it is up: only not routed


def test_tmp_and_home_are_each_hosts_own(fleet_hosts):
    """A file written in /tmp and in the home on one host is absent on the other host and on this machine."""
    first, second = fleet_hosts.names[:2]
    token = "fleet-probe-%s" % uuid.uuid4().hex
    try:
        fleet_hosts.ssh(first, "echo %s > /tmp/%s && echo %s > ~/%s" % (first, token, first, token))
        results = ansible(fleet_hosts, "ansible.builtin.shell", "cat /tmp/%s ~/%s" % (token, token))
        assert results[first][0] and first in results[first][1]
        assert not results[second][0]
        assert not os.path.exists("/tmp/" + token)
        assert not os.path.exists(os.path.join(os.path.expanduser("~root"), token))
    finally:
        fleet_hosts.ssh(first, "rm -f /tmp/%s ~/%s" % (token, token), check=False)


def test_each_host_has_its_own_engine(fleet_hosts):
    """A container started on one host is on that host's engine only (not the other's, not this machine's);
    each engine has the reference image."""
    first, second = fleet_hosts.names[:2]
    name = "fleet-probe-%s" % uuid.uuid4().hex[:12]
    try:
        fleet_hosts.ssh(first, "docker run -d --init --name %s %s sleep 300" % (name, IMAGE))
        results = ansible(fleet_hosts, "ansible.builtin.command", "docker ps")
        assert name in results[first][1]
        assert results[second][0] and name not in results[second][1]
        here = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                              check=True)
        assert name not in here.stdout.split()
        for host in fleet_hosts.names:
            assert fleet_hosts.ssh(host, "docker image inspect --format '{{.Id}}' %s" % IMAGE).stdout.strip()
    finally:
        fleet_hosts.ssh(first, "docker rm -f %s" % name, check=False)


def _free_port():
    for _attempt in range(50):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 20000
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port")


def _get(url, tries=50):
    for _attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.read().decode()
        except OSError:
            time.sleep(0.1)
    raise AssertionError("no answer from %s" % url)


def test_both_hosts_publish_the_same_port_at_once(fleet_hosts):
    """The same host port on both hosts at once (their port scopes differ), each reached from this machine at
    the host's own address, and this machine's own port stays free."""
    port = _free_port()
    name = "fleet-port-%s" % uuid.uuid4().hex[:12]
    serve = "mkdir -p /w && echo $WHO > /w/who && cd /w && exec python3 -m http.server 8080"
    try:
        for host in fleet_hosts.names:
            fleet_hosts.ssh(host, "docker run -d --init --name %s -e WHO=%s -p %d:8080 %s sh -c '%s'"
                            % (name, host, port, IMAGE, serve))
        for host in fleet_hosts.hosts:
            assert _get("http://%s:%d/who" % (host["address"], port)).strip() == host["name"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
    finally:
        for host in fleet_hosts.names:
            fleet_hosts.ssh(host, "docker rm -f %s" % name, check=False)


def test_a_rerun_changes_nothing(fleet_hosts):
    """Hosts up: the script says so, keeps every daemon (same pids) and rewrites no file."""
    before = {host["name"]: _pids(fleet_hosts, host) for host in fleet_hosts.hosts}
    stamp = os.stat(fleet_hosts.inventory).st_mtime_ns
    started = time.monotonic()
    proc = ensure(len(fleet_hosts.names))
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    for host in fleet_hosts.names:
        assert "%s " % host in proc.stderr and "unchanged" in proc.stderr
    assert "started" not in proc.stderr
    assert {host["name"]: _pids(fleet_hosts, host) for host in fleet_hosts.hosts} == before
    assert os.stat(fleet_hosts.inventory).st_mtime_ns == stamp
    assert took < 10, took


def _pids(fleet, host):
    folder = host["dir"]
    found = []
    for name in ("dockerd.pid", "sshd.pid"):
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            found.append(int(handle.read()))
    return found


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_down_leaves_nothing(tmp_path):
    """A fleet of its own (own folder and networks): up with a container and a background process started
    through a login, then --down: no process of it, no namespace, veth, mount, folder or lock is left."""
    if os.geteuid() != 0:
        pytest.skip("the fleet test hosts need root")
    folder = os.path.join(ROOT, ".build", "fleet-down-%d" % os.getpid())
    # No TAO_FLEET_NET: the shared fleet (make test brings it up first) holds the first free default net, so this
    # one must find another by itself, as a second checkout's fleet on the same machine does.
    env = {"TAO_FLEET_DIR": folder, "TAO_FLEET_NAME": "downtest"}
    shared = os.path.join(ROOT, ".build", "fleet", "hosts.json")
    taken = set()
    if os.path.exists(shared):
        with open(shared, encoding="utf-8") as handle:
            taken = {record["address"].rsplit(".", 2)[0] for record in json.load(handle)}
    proc = ensure(2, env)
    try:
        assert proc.returncode == 0, proc.stderr
        fleet = Fleet(folder, 2)
        with open(os.path.join(folder, "net"), encoding="utf-8") as handle:
            net = handle.read().strip()
        assert net not in taken and all(host["address"].startswith(net + ".") for host in fleet.hosts), (net, taken)
        again = ensure(2, env)  # idempotent: the same net, nothing remade
        assert again.returncode == 0 and "up, unchanged" in again.stderr, again.stderr
        fleet.stop_sshd("downtest-2")  # a host gone from the network: Ansible says so, the other one answers
        results = ansible(fleet, "ansible.builtin.command", "hostname")
        assert results["downtest-1"][0] and results["downtest-2"][0] is False, results
        fleet.restore(env)
        assert all(ok for ok, _text in ansible(fleet, "ansible.builtin.command", "hostname").values())
        fleet.ssh("downtest-1", "docker run -d --init %s sleep 600" % IMAGE)
        sleeper = int(fleet.ssh("downtest-2", "nohup sleep 600 >/dev/null 2>&1 </dev/null & echo $!").stdout)
        pids = [pid for host in fleet.hosts for pid in _pids(fleet, host)]
        with open(os.path.join(folder, "hosts.json"), encoding="utf-8") as handle:
            records = json.load(handle)
        namespaces = [record["netns"] for record in records]
        inside = [int(pid) for name in namespaces for pid in subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=True).stdout.split()]
        assert set(pids) <= set(inside) and len(inside) > len(pids)  # containerd, its shims, docker-proxy...
        tag = namespaces[0].split("-")[2]
    finally:
        down = subprocess.run([SCRIPT, "--down"], capture_output=True, text=True, timeout=120, check=False,
                              env=dict(os.environ, **env), stdin=subprocess.DEVNULL)
    assert down.returncode == 0, down.stderr
    time.sleep(0.3)
    for pid in pids + inside + [sleeper]:
        assert not _alive(pid), "process %d outlived --down" % pid
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert folder not in left
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in netns for name in namespaces)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "tf%s-" % tag not in links
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = handle.read()
    assert folder not in mounts and "tao-fleet-%s" % tag not in mounts
    assert not os.path.exists(folder) and not os.path.exists(folder + ".lock")
    assert not os.path.exists("/run/tao-fleet-%s" % tag)


def test_namespaces_left_by_a_removed_checkout_are_made_again(tmp_path):
    """The hosts' namespaces outlive their folder: a CI runner kills every process and clones the checkout again
    at the same path. The next run must not take those namespaces as up (their /tmp and home are bound to
    folders that were deleted, where nothing can be created): it makes them again, on the same net, and removes
    what is left of hosts it was not asked for (nothing could log in to them), their containers with them."""
    if os.geteuid() != 0:
        pytest.skip("the fleet test hosts need root")
    from hosts import fleet as fleet_hosts_module  # pylint: disable=import-error,import-outside-toplevel
    folder = os.path.join(ROOT, ".build", "fleet-reclone-%d" % os.getpid())
    env = {"TAO_FLEET_DIR": folder, "TAO_FLEET_NAME": "reclone"}
    settings = fleet_hosts_module.Settings(dict(os.environ, **env))
    addresses = fleet_hosts_module.common.host_addresses()
    for net in reversed(fleet_hosts_module.DEFAULT_NETS):
        # The last free default net: a run without DIR/net comes back to it only because the hosts hold it.
        settings.net = net
        hosts = [fleet_hosts_module.Host(settings, index) for index in (1, 2)]
        if not any(host.gateway in addresses or host.route_clash() for host in hosts):
            break
    else:
        pytest.skip("every default net of the fleet test hosts is in use on this machine")
    namespaces = []
    try:
        proc = ensure(2, dict(env, TAO_FLEET_NET=net))
        assert proc.returncode == 0, proc.stderr
        namespaces = [host.netns for host in hosts]
        # Host 1 as CI leaves it (every process killed); host 2 still running a container.
        first = Fleet(folder, 2)
        container = first.ssh("reclone-2", "docker run -d --init %s sleep 600" % IMAGE).stdout.strip()
        sleeper = int(first.ssh("reclone-2", "docker inspect -f '{{.State.Pid}}' %s" % container).stdout)
        assert _alive(sleeper)
        hosts[0].kill_inside()
        subprocess.run(["rm", "-rf", "--one-file-system", folder], check=False)
        assert not os.path.exists(os.path.join(folder, "hosts", "reclone-2", "host.json"))
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert all(name in listed for name in namespaces)  # what the clone finds
        assert all(fleet_hosts_module.mounted(host.mnt) for host in hosts)
        env["TAO_FLEET_NET"] = ""  # none given, whatever the outer environment says
        again = ensure(1, env)
        assert again.returncode == 0, again.stderr
        assert "reclone-1 %s.1.2: started namespaces" % net in again.stderr, again.stderr
        assert "reclone-2: removed" in again.stderr, again.stderr
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert namespaces[1] not in listed and not os.path.exists(hosts[1].nsdir)
        assert not _alive(sleeper), "the container of a host removed without its folder outlived it"
        fleet = Fleet(folder, 1)
        token = "fleet-probe-%s" % uuid.uuid4().hex
        out = fleet.ssh("reclone-1", "echo a > /tmp/%s && echo b > ~/%s && cat /tmp/%s ~/%s" % ((token,) * 4)).stdout
        assert out.split() == ["a", "b"]
        with open(os.path.join(folder, "hosts", "reclone-1", "tmp", token), encoding="utf-8") as handle:
            assert handle.read() == "a\n"
        unchanged = ensure(1, env)
        assert unchanged.returncode == 0 and "up, unchanged" in unchanged.stderr, unchanged.stderr
    finally:
        down = subprocess.run([SCRIPT, "--down"], capture_output=True, text=True, timeout=120, check=False,
                              env=dict(os.environ, **env), stdin=subprocess.DEVNULL)
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(folder) and not os.path.exists(folder + ".lock")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in namespaces)
    assert not os.path.exists(settings.nsroot)


@pytest.mark.parametrize("env, args, message", [
    ({}, ["abc"], "whole number"),
    ({}, ["0"], "between 1 and 250"),
    ({}, ["2", "3"], "usage"),
    ({"TAO_FLEET_DIR": "/work/x $(touch /tmp/pwned)"}, ["1"], "letters, digits"),
    ({"TAO_FLEET_DIR": "/work/x'y"}, ["1"], "letters, digits"),
    ({"TAO_FLEET_DIR": "/tmp/fleet-here"}, ["1"], "under /tmp"),
    ({"TAO_FLEET_NAME": "a\nb"}, ["1"], "TAO_FLEET_NAME"),
    ({"TAO_FLEET_NAME": "fleet\n"}, ["1"], "TAO_FLEET_NAME"),
    ({"TAO_FLEET_DIR": "/work/fleet\n"}, ["1"], "letters, digits"),
    ({"TAO_FLEET_NET": "10.198.1"}, ["1"], "TAO_FLEET_NET"),
    ({"TAO_FLEET_NET": "10.198\n"}, ["1"], "TAO_FLEET_NET"),
    ({"TAO_FLEET_PYTHON": "/usr/bin/python3"}, ["1"], "import httpx"),
    ({"TAO_FLEET_NET": "172.17"}, ["1"], "already in use on this machine"),
])
def test_bad_input_is_refused_before_anything_is_made(tmp_path, env, args, message):
    base = dict(os.environ, TAO_FLEET_DIR=os.path.join(ROOT, ".build", "fleet-bad-%d" % os.getpid()),
                TAO_FLEET_NET="10.196")
    base.update(env)
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    proc = subprocess.run([SCRIPT] + args, capture_output=True, text=True, timeout=60, env=base, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert not os.path.exists("/tmp/pwned")
    assert not os.path.exists(os.path.join(ROOT, ".build", "fleet-bad-%d" % os.getpid()))
    assert not os.path.exists(os.path.join(ROOT, ".build", "fleet-bad-%d.lock" % os.getpid()))
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout == before


def test_a_symlink_to_tmp_or_a_folder_of_another_user_is_refused(tmp_path):
    link = os.path.join(ROOT, ".build", "fleet-link-%d" % os.getpid())
    other = os.path.join(ROOT, ".build", "fleet-other-%d" % os.getpid())
    try:
        os.symlink(str(tmp_path), link)
        proc = subprocess.run([SCRIPT, "1"], capture_output=True, text=True, timeout=60, check=False,
                              env=dict(os.environ, TAO_FLEET_DIR=link), stdin=subprocess.DEVNULL)
        assert proc.returncode == 1 and "under /tmp" in proc.stderr, proc.stderr
        os.mkdir(other)
        os.chown(other, 65534, 65534)
        proc = subprocess.run([SCRIPT, "1"], capture_output=True, text=True, timeout=60, check=False,
                              env=dict(os.environ, TAO_FLEET_DIR=other), stdin=subprocess.DEVNULL)
        assert proc.returncode == 1 and "belongs to uid 65534" in proc.stderr, proc.stderr
        assert os.listdir(other) == []
    finally:
        if os.path.islink(link):
            os.unlink(link)
        if os.path.isdir(other):
            os.rmdir(other)
