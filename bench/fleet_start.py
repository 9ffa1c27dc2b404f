"""Time to start many services at once: N = 1, 4, 16 on one host with forks 16, and one service on each of
1 vs 4 fleet hosts (scripts/ensure-fleet.sh).

One host: an inventory of N names for this machine (``ansible_connection=local``), one
``tao_inference_service`` task (reference image, zero load time, ``wait: true``) over all of them with
``forks: 16``: N module processes share one registry (its lock, its port allocation) and one Docker engine.
The time is from the first host's task start to the last host's ready result (the record callback's
timestamps), so ansible-playbook's own start-up is not counted.

Fleet: the same task on 1, then 4, fleet test hosts (each its own registry and engine), followed by the
controller's forwards (each host's entry by set_fact, then one ``tao_inference_fleet`` task on the controller for
all hosts, as the inference_service role opens them); the
time runs from the first start to the last forward. The 1-service case of each is the baseline of its ratio,
measured in the same run, alternating.

The engine's own floor is measured in the same run: N bare ``docker run -d`` of the same command at once,
each polled for readiness every 10 ms (``raw_*``). On a 2-core machine the engine alone scales far worse than
linearly (containers are created and started one after another by dockerd, and N servers start on 2 cores),
so ``raw_scale_16_vs_1`` says how much of ``scale_16_vs_1`` is the machine's.

Ansible's own floor is measured in the same run too: one ``ping`` task over the same 1/16 local hosts and 1/4
fleet hosts (``ansible_ping_*``): a module run per host and nothing else. On 2 cores 16 local hosts' pings take
about ten times one host's: the forks share the cores.

The last line is one JSON object: ``scale_16_vs_1`` (goal <= 4) and ``scale_4_hosts_vs_1`` (goal <= 1.5) with
the medians behind them, and ``raw_scale_16_vs_1``.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from concurrent.futures import ThreadPoolExecutor

from playbook_runner import COLLECTIONS, ROOT, run_playbook

sys.path.insert(0, COLLECTIONS)

from ansible_collections.tao.inference.plugins.module_utils.command import inner_command  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec  # noqa: E402

IMAGE = os.environ.get("TAO_BENCH_IMAGE", "tao-inference-emulator:latest")
RUNS = int(os.environ.get("TAO_BENCH_RUNS", "3"))
FLEET = os.path.join(ROOT, ".build", "fleet")

PLAY = """\
- hosts: {hosts}
  gather_facts: false
  module_defaults:
    group/tao.inference.service:
      registry_path: {registry}
  tasks:
    - name: Warm up the connection (its first-task cost is not the start's)
      ansible.builtin.ping:
    - name: Start
      tao.inference.tao_inference_service:
        network_arch: cosmos-rl
        model_path: hf_model://nvidia/Cosmos-Reason1-7B
        image: {image}
        num_gpus: 0
        inventory_host: "{{{{ inventory_hostname }}}}"
        env: {{TAO_EMULATOR_LOAD_SECONDS: "0"}}
      register: svc
{forward}    - name: Stop
      tao.inference.tao_inference_service:
        job_id: "{{{{ svc.job_id }}}}"
        state: absent
{close}"""

FORWARD = """\
    - name: Forward
      tao.inference.tao_inference_fleet:
        hosts: "{{ ansible_play_batch | map('extract', hostvars) | selectattr('fwd', 'defined') | map(attribute='fwd') | list }}"
        close_stale: false
      run_once: true
      delegate_to: localhost
"""

# What the inference_service role does after its starts: each host says how it is reached (set_fact, no module
# run), then one task on the controller opens every host's forward at once.
ENTRY = """\
    - name: Entry
      ansible.builtin.set_fact:
        fwd:
          inventory_host: "{{ inventory_hostname }}"
          services: [{job_id: "{{ svc.job_id }}", network_arch: cosmos-rl, host_url: "{{ svc.host_url }}",
                      platform_status: {state: running}}]
          connection:
            ansible_host: "{{ hostvars[inventory_hostname].ansible_host }}"
            ansible_user: "{{ hostvars[inventory_hostname].ansible_user }}"
            ansible_port: "{{ hostvars[inventory_hostname].ansible_port }}"
            ansible_ssh_private_key_file: "{{ hostvars[inventory_hostname].ansible_ssh_private_key_file }}"
            ansible_ssh_common_args: "{{ hostvars[inventory_hostname].ansible_ssh_common_args }}"
"""

CLOSE = """\
    - name: Close
      tao.inference.tao_inference_fleet:
        state: absent
        job_ids: "{{ ansible_play_batch | map('extract', hostvars, ['svc', 'job_id']) | list }}"
      run_once: true
      delegate_to: localhost
"""

# Ansible's own floor: one ping task over the same hosts (a module run per host and nothing else).
PING = """\
- hosts: {hosts}
  gather_facts: false
  tasks:
    - name: Warm up the connection
      ansible.builtin.ping:
    - name: Ping
      ansible.builtin.ping:
"""


def span(records, first, last):
    """Seconds from the first host's start of task ``first`` to the last host's end of task ``last``."""
    starts = [r["task_started"] for r in records if r["task"] == first]
    ends = [r["finished"] for r in records if r["task"] == last]
    return max(ends) - min(starts)


def run(tmp, inventory_text, hosts, forward=False):
    inventory = os.path.join(tmp, "inventory.ini")
    with open(inventory, "w") as handle:
        handle.write(inventory_text)
    text = PLAY.format(hosts=hosts, registry=os.path.join(tmp, "registry.json"), image=IMAGE,
                       forward=ENTRY + FORWARD if forward else "", close=CLOSE if forward else "")
    records = []
    env = {"ANSIBLE_FORKS": "16", "ANSIBLE_INVENTORY": inventory}
    _by_task, _whole = run_playbook(tmp, text, env=env, records=records)
    for row in records:
        if row["task"] == "Start":
            assert row["result"]["readiness"]["state"] == "ready", row
    return span(records, "Start", "Forward" if forward else "Start")


def ping(tmp, inventory_text, hosts):
    """Seconds of one ping task over ``hosts`` (first start to last result): Ansible's floor for a task."""
    inventory = os.path.join(tmp, "inventory.ini")
    with open(inventory, "w") as handle:
        handle.write(inventory_text)
    records = []
    run_playbook(tmp, PING.format(hosts=hosts), env={"ANSIBLE_FORKS": "16", "ANSIBLE_INVENTORY": inventory},
                 records=records)
    return span(records, "Ping", "Ping")


def _ready(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health/readiness" % port, timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _raw_one(port):
    job_id = str(uuid.uuid4())
    spec = build_spec({"network_arch": "cosmos-rl", "model_path": "hf_model://nvidia/Cosmos-Reason1-7B",
                       "num_gpus": 0, "image": IMAGE}, {})
    subprocess.run(["docker", "run", "-d", "--init", "--name", job_id, "-e", "TAO_EMULATOR_LOAD_SECONDS=0",
                    "-p", "127.0.0.1:%d:8080" % port, IMAGE, "/bin/sh", "-c", inner_command(spec, job_id)],
                   check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while not _ready(port):
        if time.monotonic() > deadline:
            raise SystemExit("a bare container was not ready within 120 s")
        time.sleep(0.01)
    return job_id


def raw(count):
    """N bare docker runs at once, each polled until ready; seconds until the last is ready."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        names = list(pool.map(_raw_one, range(8300, 8300 + count)))
    elapsed = time.monotonic() - started
    subprocess.run(["docker", "rm", "-f"] + names, check=True, capture_output=True)
    return elapsed


def local_inventory(count):
    return "\n".join("svc%d ansible_connection=local ansible_python_interpreter=%s" % (i, sys.executable)
                     for i in range(1, count + 1)) + "\n"


def fleet_inventory():
    subprocess.run([os.path.join(ROOT, "scripts", "ensure-fleet.sh"), "4"], check=True, capture_output=True,
                   timeout=600)
    with open(os.path.join(FLEET, "inventory.ini")) as handle:
        return handle.read() + "\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable


def main():
    subprocess.run(["docker", "image", "inspect", IMAGE], check=True, capture_output=True)
    one_host = dict((n, []) for n in (1, 4, 16))
    bare = {1: [], 16: []}
    fleet = {1: [], 4: []}
    floor = {"one_1": [], "one_16": [], "fleet_1": [], "fleet_4": []}
    fleet_text = fleet_inventory()
    with tempfile.TemporaryDirectory() as tmp:
        run(tmp, local_inventory(1), "all")  # warm the engine's caches
        for index in range(RUNS):
            for count in (1, 16):
                bare[count].append(raw(count))
            for count in (1, 4, 16):
                one_host[count].append(run(tmp, local_inventory(count), "all"))
            for count in (1, 4):
                fleet[count].append(run(tmp, fleet_text, "gpu[0:%d]" % (count - 1), forward=True))
            for count in (1, 16):
                floor["one_%d" % count].append(ping(tmp, local_inventory(count), "all"))
            for count in (1, 4):
                floor["fleet_%d" % count].append(ping(tmp, fleet_text, "gpu[0:%d]" % (count - 1)))
            print("run %d: bare docker 1/16 %s s; one host 1/4/16 services %s s; fleet 1/4 hosts %s s" % (
                index + 1, "/".join("%.2f" % bare[n][-1] for n in (1, 16)),
                "/".join("%.2f" % one_host[n][-1] for n in (1, 4, 16)),
                "/".join("%.2f" % fleet[n][-1] for n in (1, 4))))
    med = dict(("one_host_%d_s" % n, round(statistics.median(v), 3)) for n, v in one_host.items())
    med.update(("raw_%d_s" % n, round(statistics.median(v), 3)) for n, v in bare.items())
    med.update(raw_scale_16_vs_1=round(med["raw_16_s"] / med["raw_1_s"], 2))
    med.update(("fleet_%d_hosts_s" % n, round(statistics.median(v), 3)) for n, v in fleet.items())
    med.update(("ansible_ping_%s_s" % key, round(statistics.median(v), 3)) for key, v in floor.items())
    med.update(ansible_ping_scale_16_vs_1=round(med["ansible_ping_one_16_s"] / med["ansible_ping_one_1_s"], 2),
               ansible_ping_scale_4_hosts_vs_1=round(med["ansible_ping_fleet_4_s"] / med["ansible_ping_fleet_1_s"], 2))
    med.update(scale_16_vs_1=round(med["one_host_16_s"] / med["one_host_1_s"], 2),
               scale_4_hosts_vs_1=round(med["fleet_4_hosts_s"] / med["fleet_1_hosts_s"], 2), runs=RUNS,
               forks=16, goals={"scale_16_vs_1": 4.0, "scale_4_hosts_vs_1": 1.5})
    print(json.dumps(med))


if __name__ == "__main__":
    main()
