"""Fleets through ansible-playbook on test hosts that really are separate (scripts/ensure-fleet.sh): one play
starts services on every host (each its own registry, the same host port on each), one view on the controller
(registry_facts), requests from the controller routed to a service on another host through its forward, a batch
spread over every service of an arch, a host lost mid-play (the others finish, the view names it), a stop of
everything, and nothing left on any host: no container, no entry, no forward."""

import json
import os
import socket
import subprocess
import textwrap
import threading
import time

import pytest

from .conftest import IMAGE
from .test_docker_hosts import Forwarder

PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def play_file(harness, text):
    harness.count += 1
    path = harness.tmp / ("fleet%d.yml" % harness.count)
    path.write_text(textwrap.dedent(text).replace("REGISTRY", harness.registry))
    return str(path)


def inventory(fleet, extra=""):
    with open(fleet.inventory, encoding="utf-8") as handle:
        text = handle.read()
    return text + extra + "\n[controller]\nlocalhost ansible_connection=local ansible_python_interpreter=PYTHON\n"


START = """\
- name: Start on every host
  hosts: gpu
  gather_facts: false
  module_defaults:
    group/tao.inference.service:
      registry_path: REGISTRY
  roles:
    - role: tao.inference.inference_service
      vars:
        inference_service_network_arch: cosmos-rl
        inference_service_model_path: hf_model://nvidia/Cosmos-Reason1-7B
        inference_service_image: %s
        inference_service_num_gpus: 0
        inference_service_name: "%s"
        inference_service_per_host: %d
""" % (IMAGE, "{{ fleet_name }}", 2)

VIEW = """\
- name: One view
  hosts: gpu
  gather_facts: false
  module_defaults:
    group/tao.inference.service:
      registry_path: REGISTRY
  roles:
    - role: tao.inference.registry_facts
"""

STOP = """\
- name: Stop everything of these names on every host
  hosts: gpu
  gather_facts: false
  module_defaults:
    group/tao.inference.service:
      registry_path: REGISTRY
  tasks:
    - name: Stop
      ansible.builtin.include_role:
        name: tao.inference.inference_service
      vars:
        inference_service_state: absent
        inference_service_name: "{{ item }}"
      loop: "{{ fleet_names }}"
"""


def host_containers(fleet, name, registry):
    env = dict(os.environ, DOCKER_HOST=fleet.host(name)["docker_host"])
    proc = subprocess.run(["docker", "ps", "-aq", "--filter", "label=tao.inference.registry=%s" % registry],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    return proc.stdout.split()


def host_registry(fleet, name, registry):
    proc = fleet.ssh(name, "cat %s 2>/dev/null || true" % registry)
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def ssh_forwards():
    """Command lines of this machine's ssh -N -L processes."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == b"ssh" and b"-N" in argv and b"-L" in argv:
                found.append(b" ".join(argv).decode())
    return found


@pytest.fixture
def cleanup(harness, fleet_hosts):
    yield
    for record in harness.registry_data().get("forwards") or []:
        spec = "127.0.0.1:%s:" % record.get("local_port")
        if any(spec in line for line in ssh_forwards()) and record.get("pid"):
            try:
                os.kill(int(record["pid"]), 15)
            except OSError:
                pass
    for name in fleet_hosts.names:
        left = host_containers(fleet_hosts, name, harness.registry)
        if left:
            subprocess.run(["docker", "rm", "-f"] + left, env=dict(os.environ, DOCKER_HOST=fleet_hosts.host(name)["docker_host"]),
                           capture_output=True, timeout=60, check=False)


def test_fleet_start_view_request_spread_stop(harness, fleet_hosts, cleanup):
    inv = inventory(fleet_hosts)
    run = harness.playbook(play_file(harness, START), {"fleet_name": "eval"}, inventory=inv, args=["--forks", "8"])
    assert run.rc == 0, run.output[-3000:]
    names = fleet_hosts.names
    ports = {}
    for name in names:
        # Each host: two services in its own registry, recording the inventory host and its own machine.
        entries = dict((k, v) for k, v in host_registry(fleet_hosts, name, harness.registry).items()
                       if isinstance(v, dict))
        assert sorted(e["name"] for e in entries.values()) == ["eval-1", "eval-2"]
        assert all(e["inventory_host"] == name and e["machine"] == name for e in entries.values())
        ports[name] = sorted(e["host_port"] for e in entries.values())
        assert len(host_containers(fleet_hosts, name, harness.registry)) == 2
    # Their port scopes really differ: the same ports on both hosts at once.
    assert ports[names[0]] == ports[names[1]]
    # On each host the platform is checked once, both services are started, and only then watched: they load at
    # the same time (a host's second start never waits for its first to be ready).
    for name in names:
        order = [r["task"] for r in run.records if r["host"] == name]
        assert order.count("Check that the platform can run the service") == 1
        starts = [i for i, task in enumerate(order) if task == "Start the service"]
        watches = [i for i, task in enumerate(order) if task == "Wait for a readiness change"]
        assert len(starts) == 2 and watches and starts[-1] < watches[0], order
    # The controller's registry holds only the forwards, one per service.
    controller = harness.registry_data()
    assert len(controller["forwards"]) == 4 and not [k for k, v in controller.items() if isinstance(v, dict)]

    # One view: every service on every host, each with a controller URL on this machine.
    view = harness.playbook(play_file(harness, VIEW + """\
  post_tasks:
    - name: Show the view
      ansible.builtin.debug:
        var: registry_facts_fleet
      run_once: true
"""), inventory=inv)
    assert view.rc == 0, view.output[-3000:]
    fleet = view.task("Show the view")["result"]["registry_facts_fleet"]
    assert sorted((r["host"], r["name"]) for r in fleet) == sorted(
        (h, n) for h in names for n in ("eval-1", "eval-2"))
    assert all(r["state"] == "running" and r["ready"] and r["controller_url"].startswith("http://127.0.0.1:")
               for r in fleet)
    assert not view.task("Merge every host's services on the controller")["result"]["changed"]  # forwards kept
    assert len(set(r["controller_url"] for r in fleet)) == 4

    # A request from the controller routed by job_id to a service on another host, through its forward; an
    # ambiguous arch lists every candidate with its host; a spread batch reaches every service.
    target = next(r for r in fleet if r["host"] == names[1])
    asks = harness.playbook(play_file(harness, VIEW + """\
- name: Ask from the controller
  hosts: localhost
  gather_facts: false
  vars:
    view: "{{ hostvars['localhost'].registry_facts_fleet }}"
  tasks:
    - name: One request to one service of another host
      tao.inference.tao_inference_request:
        fleet: "{{ view }}"
        job_id: %s
        prompt: what is this?
        media: ["%s"]
        sampling: {}
      register: one

    - name: An arch that several hosts run
      tao.inference.tao_inference_request:
        fleet: "{{ view }}"
        network_arch: cosmos-rl
        prompt: what is this?
        media: ["%s"]
        sampling: {}
      register: ambiguous
      failed_when: false
""" % (target["job_id"], PNG, PNG)), inventory=inv)
    one = asks.task("One request to one service of another host")["result"]
    assert one["host"] == names[1] and one["job_id"] == target["job_id"] and one["status"] == 200
    assert one["controller_url"] == target["controller_url"] and one["content"]
    ambiguous = asks.task("An arch that several hosts run")["result"]
    assert "choose one with job_id" in ambiguous["msg"] and all(("on %s" % h) in ambiguous["msg"] for h in names)
    assert len(ambiguous["candidates"]) == 4

    spread = harness.playbook(play_file(harness, VIEW + """\
- name: Spread from the controller
  hosts: localhost
  gather_facts: false
  tasks:
    - name: A batch spread over every cosmos-rl service
      tao.inference.tao_inference_request:
        fleet: "{{ hostvars['localhost'].registry_facts_fleet }}"
        network_arch: cosmos-rl
        spread: true
        concurrency: 2
        requests: "{{ items }}"
        sampling: {}
      vars:
        items: %s
      register: spread
""" % json.dumps([{"id": "q%d" % i, "prompt": "p%d" % i, "media": [PNG]} for i in range(8)])), inventory=inv)
    assert spread.rc == 0, spread.output[-3000:]
    result = spread.task("A batch spread over every cosmos-rl service")["result"]
    assert [r["id"] for r in result["results"]] == ["q%d" % i for i in range(8)]
    assert all(r["status"] == "ok" for r in result["results"])
    assert sorted(s["total"] for s in result["summary"]["services"]) == [2, 2, 2, 2]
    assert set(r["host"] for r in result["results"]) == set(names)

    # Stop everything of these names on every host: nothing left anywhere.
    stop = harness.playbook(play_file(harness, STOP), {"fleet_names": ["eval-1", "eval-2"]}, inventory=inv)
    assert stop.rc == 0, stop.output[-3000:]
    for name in names:
        assert host_containers(fleet_hosts, name, harness.registry) == []
        assert not [v for v in host_registry(fleet_hosts, name, harness.registry).values() if isinstance(v, dict)]
    assert "forwards" not in harness.registry_data()
    specs = [r["controller_url"].rsplit(":", 1)[1] for r in fleet]
    assert not [line for line in ssh_forwards() if any("127.0.0.1:%s:" % port in line for port in specs)]


class Proxy(object):
    """A TCP relay from 127.0.0.1 to a host's sshd, that can be cut: the host is lost mid-play."""

    def __init__(self, address, port):
        self.target = (address, port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.sockets = []
        self.down = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.down:
            try:
                client, _addr = self.server.accept()
            except OSError:
                return
            if self.down:
                client.close()
                return
            upstream = socket.create_connection(self.target, timeout=10)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    _pipe = staticmethod(Forwarder._pipe)  # the same byte relay as the engine forwarder's

    def cut(self):
        self.down = True
        self.server.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass


def test_a_host_lost_mid_play_fails_alone_and_the_view_names_it(harness, fleet_hosts, cleanup, tmp_path):
    second = fleet_hosts.host(fleet_hosts.names[1])
    proxy = Proxy(second["address"], second["port"])
    trigger = tmp_path / "cut"
    with open(fleet_hosts.inventory, encoding="utf-8") as handle:
        line = next(text for text in handle.read().splitlines() if text.startswith(second["name"] + " "))
    # A third inventory host: the second machine reached through the relay, and lost once the play is under way.
    flaky = line.replace(second["name"] + " ", "lost ", 1).replace(
        "ansible_host=%s" % second["address"], "ansible_host=127.0.0.1").replace(
        "ansible_port=%s" % second["port"], "ansible_port=%d" % proxy.port).replace(
        "-o IdentitiesOnly=yes", "-o IdentitiesOnly=yes -o HostKeyAlias=%s" % second["address"])
    inv = inventory(fleet_hosts, "\n" + flaky)
    play = play_file(harness, """\
- name: Everyone answers, then one host is lost
  hosts: gpu
  gather_facts: false
  tasks:
    - name: Every host answers
      ansible.builtin.ping:

    - name: The relay to host lost is cut
      ansible.builtin.file:
        path: %s
        state: touch
        mode: "0600"
      delegate_to: localhost
      run_once: true
""" % trigger + START.replace("{{ fleet_name }}", "{{ 'lost-' ~ inventory_hostname }}").replace(
        "inference_service_per_host: 2", "inference_service_per_host: 1") + VIEW + """\
  post_tasks:
    - name: Show the view
      ansible.builtin.debug:
        var: registry_facts_fleet
      run_once: true
""")

    def cut_when_touched():
        deadline = time.monotonic() + 120
        while not trigger.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.cut()

    threading.Thread(target=cut_when_touched, daemon=True).start()
    run = harness.playbook(play, inventory=inv, args=["--forks", "8"])
    assert run.rc != 0  # a host was lost
    assert run.task("Every host answers", host="lost")["status"] == "ok"
    names = fleet_hosts.names
    for name in names:
        assert run.task("Show where the controller reaches it", host=name)["status"] == "ok"
    view = run.task("Show the view")["result"]["registry_facts_fleet"]
    rows = dict((r["host"], r) for r in view)
    assert rows["lost"]["state"] == "unreachable" and rows["lost"]["job_id"] is None
    assert all(rows[name]["state"] == "running" and rows[name]["controller_url"] for name in names)
    stop = harness.playbook(play_file(harness, STOP), {"fleet_names": ["lost-%s" % n for n in names]},
                            inventory=inventory(fleet_hosts))
    assert stop.rc == 0, stop.output[-3000:]
    for name in names:
        assert host_containers(fleet_hosts, name, harness.registry) == []
    assert "forwards" not in harness.registry_data()


def test_the_playbooks_across_a_group(harness, fleet_hosts, cleanup):
    """start, status and stop with -e tao_hosts=gpu: one service per host, one table, nothing left."""
    from .conftest import ROOT

    inv = inventory(fleet_hosts)
    names = fleet_hosts.names
    common = {"tao_hosts": "gpu", "tao_registry_path": harness.registry}
    start = harness.playbook(os.path.join(ROOT, "playbooks", "start.yml"), dict(
        common, tao_network_arch="cosmos-rl", tao_model_path="hf_model://nvidia/Cosmos-Reason1-7B", tao_image=IMAGE,
        tao_num_gpus=0, tao_name="pb", tao_max_fail_percentage=50), inventory=inv, args=["--forks", "8"])
    assert start.rc == 0, start.output[-3000:]
    for name in names:
        assert "controller URL http://127.0.0.1:" in start.task("Show where the controller reaches it", host=name)[
            "result"]["msg"]
    # Every host's forward comes from one task on the controller (one module run, the forwards opened at once).
    opens = [r for r in start.records if r["task"] == "Open (or keep) the controller's forwards to the services"
             and r["status"] != "skipped"]
    assert not [r for r in start.records if r["task"] == "Open (or keep) this host's forwards on its own"
                and r["status"] != "skipped"]  # hosts in step: the batch's task covered them all
    assert len(opens) == 1 and sorted(opens[0]["result"]["opened"]) == sorted(
        r["job_id"] for r in opens[0]["result"]["services"]) and len(opens[0]["result"]["services"]) == len(names)
    status = harness.playbook(os.path.join(ROOT, "playbooks", "status.yml"), common, inventory=inv)
    assert status.rc == 0, status.output[-3000:]
    table = status.task("Show the services")["result"]["msg"]
    assert table[0].split()[0] == "HOST" and len(table) == 1 + len(names)
    assert sorted(line.split()[0] for line in table[1:]) == sorted(names)
    assert all(line.split()[2] == "pb" and line.split()[4] == "running" and "http://127.0.0.1:" in line
               for line in table[1:])
    stop = harness.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), dict(common, tao_name="pb"), inventory=inv)
    assert stop.rc == 0, stop.output[-3000:]
    for name in names:
        assert host_containers(fleet_hosts, name, harness.registry) == []
    assert "forwards" not in harness.registry_data()
    after = harness.playbook(os.path.join(ROOT, "playbooks", "status.yml"), common, inventory=inv)
    assert after.task("Show the services")["result"]["msg"] == ["No service is running."]


def test_a_host_whose_registry_cannot_be_read_is_named_in_the_table(harness, fleet_hosts, cleanup):
    from .conftest import ROOT

    broken = fleet_hosts.names[1]
    fleet_hosts.ssh(broken, "mkdir -p %s && printf 'not json' > %s && chmod 600 %s" % (
        os.path.dirname(harness.registry), harness.registry, harness.registry))
    try:
        status = harness.playbook(os.path.join(ROOT, "playbooks", "status.yml"),
                                  {"tao_hosts": "gpu", "tao_registry_path": harness.registry},
                                  inventory=inventory(fleet_hosts))
        assert status.rc == 0, status.output[-3000:]
        rows = dict((row["host"], row) for row in harness_rows(status))
        assert any(line.split()[:2] == [broken, "-"] and "error" in line
                   for line in status.task("Show the services")["result"]["msg"])
        assert rows[broken]["state"] == "error" and "not valid JSON" in rows[broken]["readiness"]
    finally:
        fleet_hosts.ssh(broken, "rm -f %s" % harness.registry)


def harness_rows(run):
    """The view the registry_facts role published, from its merge task's result."""
    return run.task("Merge every host's services on the controller")["result"]["services"]


def test_a_later_run_on_some_hosts_forwards_only_what_it_started(harness, fleet_hosts, cleanup):
    """Two plays: the role on every host, then on the second host only (the first is skipped, so it is no longer
    the batch's first with something to forward). The second run opens its forward from the host that has one,
    and never acts on the entry the first host kept from the first play."""
    inv = inventory(fleet_hosts)
    first, second = fleet_hosts.names
    one = START.replace("{{ fleet_name }}", "one").replace("inference_service_per_host: 2", "inference_service_per_host: 1")
    play = one + """\
- name: Again on the second host only
  hosts: gpu
  gather_facts: false
  module_defaults:
    group/tao.inference.service:
      registry_path: REGISTRY
  tasks:
    - name: Start on the second host only
      ansible.builtin.include_role:
        name: tao.inference.inference_service
      vars:
        inference_service_network_arch: cosmos-rl
        inference_service_model_path: hf_model://nvidia/Cosmos-Reason1-7B
        inference_service_image: %s
        inference_service_num_gpus: 0
        inference_service_name: two
      when: inventory_hostname == '%s'
""" % (IMAGE, second)
    run = harness.playbook(play_file(harness, play), inventory=inv, args=["--forks", "8"])
    try:
        assert run.rc == 0, run.output[-3000:]
        opens = [r for r in run.records if r["task"] == "Open (or keep) the controller's forwards to the services"
                 and r["status"] != "skipped"]
        assert len(opens) == 2, [(r["host"], r["status"]) for r in opens]
        later = opens[-1]
        assert later["host"] == second and [h["inventory_host"] for h in later["result"]["invocation"]["module_args"][
            "hosts"]] == [second]
        assert [r["name"] for r in later["result"]["services"]] == ["two"] and later["result"]["opened"]
        shown = [r for r in run.records if r["task"] == "Show where the controller reaches it" and r["host"] == second]
        assert "controller URL http://127.0.0.1:" in shown[-1]["result"]["msg"]
        assert len(harness.registry_data()["forwards"]) == 3
    finally:
        stop = harness.playbook(play_file(harness, STOP), {"fleet_names": ["one", "two"]}, inventory=inv)
        assert stop.rc == 0, stop.output[-3000:]
    for name in fleet_hosts.names:
        assert host_containers(fleet_hosts, name, harness.registry) == []
    assert "forwards" not in harness.registry_data()


def test_hosts_that_do_not_move_in_step_each_get_their_forwards(harness, fleet_hosts, cleanup):
    """strategy: free: hosts run the role at their own pace, so one task for the batch cannot cover them; each
    host that the batch's task missed opens its own forwards, and every service gets a controller URL."""
    inv = inventory(fleet_hosts)
    play = START.replace("{{ fleet_name }}", "free").replace("inference_service_per_host: 2", "inference_service_per_host: 1")
    play = play.replace("  gather_facts: false\n", "  gather_facts: false\n  strategy: free\n", 1)
    run = harness.playbook(play_file(harness, play), inventory=inv, args=["--forks", "8"])
    try:
        assert run.rc == 0, run.output[-3000:]
        for name in fleet_hosts.names:
            shown = run.task("Show where the controller reaches it", host=name)["result"]["msg"]
            assert "controller URL http://127.0.0.1:" in shown, shown
        assert len(harness.registry_data()["forwards"]) == len(fleet_hosts.names)
    finally:
        stop = harness.playbook(play_file(harness, STOP), {"fleet_names": ["free"]}, inventory=inv)
        assert stop.rc == 0, stop.output[-3000:]
    assert "forwards" not in harness.registry_data()
