"""Start-to-ready overhead of tao_inference_service with platform lepton, against the bare HTTP calls.

Every path starts the reference microservice (cosmos-rl command line, zero load time) as a deployment of the
test Lepton workspace (scripts/ensure-lepton.sh), and ends when GET /api/v1/health/readiness answers 200
through the deployment's external endpoint, with the workspace token:

  raw     a fresh Python process (as a script of one's own would be) in which httpx POSTs the same deployment
          body the driver makes, polls the deployment every 10 ms until Lepton says Ready, then its endpoint
          every 10 ms until the server is ready (the best a hand-written loop does); timed from the
          process's start to readiness;
  warm    the same with httpx already imported and connected in this process (no start-up at all: a
          stricter baseline than any script or module can meet);
  module  one `tao.inference.tao_inference_service` task (wait: true), timed from the task's start to its
          result by a callback, inside one ansible-playbook run (after a ping task, so the connection's
          first-task cost is not counted).

Runs alternate (raw, warm, module, raw...) so machine noise hits all alike. The last line is one JSON
object: {"raw_s", "warm_s", "module_s", "overhead_s" (module - raw), "overhead_vs_warm_s", ...};
"ansible_ping_task_s" is a ping task in the same play, the floor any module task pays.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from playbook_runner import COLLECTIONS, ROOT, run_playbook

sys.path.insert(0, COLLECTIONS)

import httpx  # noqa: E402

from ansible_collections.tao.inference.plugins.module_utils.command import container_env, inner_command  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import Launch  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.platforms.lepton import LeptonDriver  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec  # noqa: E402

IMAGE = os.environ.get("TAO_BENCH_IMAGE", "tao-inference-emulator:latest")
RUNS = int(os.environ.get("TAO_BENCH_RUNS", "5"))
ENV_FILE = os.path.join(ROOT, ".build", "lepton", "env")
ENV = {"TAO_EMULATOR_LOAD_SECONDS": "0"}


def workspace():
    with open(ENV_FILE) as handle:
        return dict(line.strip().split("=", 1) for line in handle if "=" in line)


def body(env):
    """The deployment the driver makes for a new service (no secrets, the workspace token on the endpoint)."""
    job_id = str(uuid.uuid4())
    spec = build_spec({"network_arch": "cosmos-rl", "model_path": "hf_model://nvidia/Cosmos-Reason1-7B", "num_gpus": 0,
                       "image": IMAGE, "env": ENV, "platform": "lepton", "resource_shape": "cpu.small"}, {})
    plain, secret = container_env(spec, job_id, {})
    driver = LeptonDriver(env["LEPTON_WORKSPACE_ID"], env["LEPTON_WORKSPACE_URL"], env["LEPTON_WORKSPACE_TOKEN"])
    return driver.deployment_body(Launch(spec, job_id, inner_command(spec, job_id), plain, secret, None, {}))


BARE = """
import json, sys, time, httpx
body, url, token = json.loads(sys.stdin.read())
client = httpx.Client(headers={"Authorization": "Bearer " + token})
name = body["metadata"]["name"]
client.post(url + "/deployments", json=body).raise_for_status()
while True:
    found = client.get(url + "/deployments/" + name).json()
    if found["status"]["state"] == "Ready":
        endpoint = found["status"]["endpoint"]["external_endpoint"]
        break
    time.sleep(0.01)
while True:
    try:
        if client.get(endpoint + "/api/v1/health/readiness").status_code == 200:
            break
    except httpx.TransportError:
        pass
    time.sleep(0.01)
"""


def delete(client, url, name):
    client.delete(url + "/deployments/" + name)
    while client.get(url + "/deployments/" + name).status_code != 404:
        time.sleep(0.05)


def fresh_once(client, env):
    made = body(env)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", BARE], input=json.dumps([made, env["LEPTON_WORKSPACE_URL"],
                                                                          env["LEPTON_WORKSPACE_TOKEN"]]),
                          capture_output=True, text=True, check=False, timeout=180)
    elapsed = time.monotonic() - start
    if proc.returncode:
        raise SystemExit("the bare process failed:\n" + proc.stdout + proc.stderr)
    delete(client, env["LEPTON_WORKSPACE_URL"], made["metadata"]["name"])
    return elapsed


def warm_once(client, env):
    made, url = body(env), env["LEPTON_WORKSPACE_URL"]
    name = made["metadata"]["name"]
    start = time.monotonic()
    client.post(url + "/deployments", json=made).raise_for_status()
    while True:
        found = client.get(url + "/deployments/" + name).json()
        if found["status"]["state"] == "Ready":
            endpoint = found["status"]["endpoint"]["external_endpoint"]
            break
        time.sleep(0.01)
    while True:
        try:
            if client.get(endpoint + "/api/v1/health/readiness").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    delete(client, url, name)
    return elapsed


PLAY = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Warm up the connection (its first-task cost is not the module's)
      ansible.builtin.ping:
    - name: Start
      tao.inference.tao_inference_service:
        registry_path: {registry}
        platform: lepton
        resource_shape: cpu.small
        network_arch: cosmos-rl
        model_path: hf_model://nvidia/Cosmos-Reason1-7B
        image: {image}
        num_gpus: 0
        env: {{TAO_EMULATOR_LOAD_SECONDS: "0"}}
      register: svc
    - name: Floor
      ansible.builtin.ping:
    - name: Stop
      tao.inference.tao_inference_service:
        registry_path: {registry}
        platform: lepton
        job_id: "{{{{ svc.job_id }}}}"
        state: absent
"""


def module_once(tmp, env):
    records, whole = run_playbook(tmp, PLAY.format(registry=os.path.join(tmp, "reg.json"), image=IMAGE), env=env)
    task, floor = records["Start"], records["Floor"]
    assert task["result"]["readiness"]["state"] == "ready", task
    return task["finished"] - task["task_started"], floor["finished"] - floor["task_started"], whole


def main():
    if not os.path.exists(ENV_FILE):
        raise SystemExit("no test workspace: run scripts/ensure-lepton.sh first")
    env = workspace()
    raw, warm, module, floor, whole = [], [], [], [], []
    with httpx.Client(headers={"Authorization": "Bearer " + env["LEPTON_WORKSPACE_TOKEN"]}, timeout=30) as client, \
            tempfile.TemporaryDirectory() as tmp:
        warm_once(client, env)  # warm every path's caches
        for index in range(RUNS):
            raw.append(fresh_once(client, env))
            warm.append(warm_once(client, env))
            task_s, floor_s, run_s = module_once(tmp, env)
            module.append(task_s)
            floor.append(floor_s)
            whole.append(run_s)
            print("run %d: bare httpx %.3f s (warm %.3f s), module task %.3f s, ping task %.3f s (whole run %.3f s)"
                  % (index + 1, raw[-1], warm[-1], module[-1], floor[-1], whole[-1]))
    raw_s, warm_s, module_s = statistics.median(raw), statistics.median(warm), statistics.median(module)
    print(json.dumps({"raw_s": round(raw_s, 3), "warm_s": round(warm_s, 3), "module_s": round(module_s, 3),
                      "overhead_s": round(module_s - raw_s, 3), "overhead_vs_warm_s": round(module_s - warm_s, 3),
                      "runs": RUNS, "ansible_ping_task_s": round(statistics.median(floor), 3),
                      "playbook_run_s": round(statistics.median(whole), 3)}))


if __name__ == "__main__":
    main()
