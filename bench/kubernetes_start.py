"""Start-to-ready overhead of tao_inference_service with platform kubernetes, against the bare client.

Every path starts the reference microservice (cosmos-rl command line, zero load time) in the test
cluster (scripts/ensure-kubernetes.sh) and ends when GET /api/v1/health/readiness answers 200 through
a LoadBalancer Service:

  raw     a fresh Python process (as `docker run` is for the local-docker bench) in which the official
          client loads the kubeconfig, creates the same Job and Service objects the driver makes, then
          polls the Service for its load balancer address and that address for readiness every 10 ms
          (the best a hand-written loop does); timed from the process's start to readiness;
  warm    the same with a client already imported and connected in this process (no start-up at
          all: a stricter baseline than any script or module can meet);
  module  one `tao.inference.tao_inference_service` task (wait: true), timed from the task's
          start to its result by a callback, inside one ansible-playbook run (after a ping task,
          so the connection's first-task cost is not counted).

Runs alternate (raw, warm, module, raw...) so machine noise hits all alike. The stand-in gives a
LoadBalancer its address after TAO_K8S_LB_DELAY (1 s), which every path waits for. The last line is
one JSON object: {"raw_s", "warm_s", "module_s", "overhead_s" (module - raw),
"overhead_vs_warm_s", ...}; "ansible_ping_task_s" is a ping task in the same play, the floor any
module task pays.
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

from playbook_runner import COLLECTIONS, ROOT, run_playbook

sys.path.insert(0, COLLECTIONS)

from ansible_collections.tao.inference.plugins.module_utils.command import container_env, inner_command  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import Launch  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.platforms.kubernetes import KubernetesDriver  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec  # noqa: E402

IMAGE = os.environ.get("TAO_BENCH_IMAGE", "tao-inference-emulator:latest")
RUNS = int(os.environ.get("TAO_BENCH_RUNS", "5"))
KUBECONFIG = os.path.join(ROOT, ".build", "kubernetes", "kubeconfig")
NAMESPACE = "tao-bench-%s" % uuid.uuid4().hex[:6]
ENV = {"TAO_EMULATOR_LOAD_SECONDS": "0"}


def ready(url):
    try:
        with urllib.request.urlopen(url + "/api/v1/health/readiness", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def clients():
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=KUBECONFIG, context="tao-test", client_configuration=configuration)
    api = client.ApiClient(configuration)
    return client.CoreV1Api(api), client.BatchV1Api(api)


def raw_once(core, batch):
    """The same objects, made and waited on with the bare client in this process (already warm)."""
    start = time.monotonic()
    name = create_and_wait(core, batch)
    elapsed = time.monotonic() - start
    delete(core, batch, name)
    return elapsed


BARE_CLIENT = """
import json, sys, time, urllib.request
from kubernetes import client, config
job, service, kubeconfig = json.loads(sys.stdin.read())
configuration = client.Configuration()
config.load_kube_config(config_file=kubeconfig, context="tao-test", client_configuration=configuration)
api = client.ApiClient(configuration)
core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
batch.create_namespaced_job(namespace, job, _preload_content=False)
core.create_namespaced_service(namespace, service, _preload_content=False)
url = None
while True:
    if url is None:
        found = json.loads(core.read_namespaced_service(name, namespace, _preload_content=False).data)
        ingress = ((found.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            url = "http://%s:8080" % ingress[0]["ip"]
    if url:
        try:
            with urllib.request.urlopen(url + "/api/v1/health/readiness", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
    time.sleep(0.01)
"""


def fresh_once(core, batch):
    """The same, in a fresh Python process that imports the client and loads the kubeconfig first."""
    job, service = objects()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", BARE_CLIENT], input=json.dumps([job, service, KUBECONFIG]),
                          capture_output=True, text=True, check=False, timeout=180)
    elapsed = time.monotonic() - start
    if proc.returncode:
        raise SystemExit("the bare-client process failed:\n" + proc.stdout + proc.stderr)
    delete(core, batch, job["metadata"]["name"])
    return elapsed


def delete(core, batch, name):
    batch.delete_namespaced_job(name, NAMESPACE, body={"propagationPolicy": "Background"}, _preload_content=False)
    core.delete_namespaced_service(name, NAMESPACE, _preload_content=False)


def objects():
    """The Job and Service the driver makes for a new service (no secrets)."""
    job_id = str(uuid.uuid4())
    spec = build_spec({"network_arch": "cosmos-rl", "model_path": "hf_model://nvidia/Cosmos-Reason1-7B",
                       "num_gpus": 0, "image": IMAGE, "env": ENV, "platform": "kubernetes"}, {})
    plain, secret = container_env(spec, job_id, {})
    driver = KubernetesDriver(namespace=NAMESPACE)
    launch = Launch(spec, job_id, inner_command(spec, job_id), plain, secret, None, {})
    return driver.job_object(launch), driver.service_object(launch)


def create_and_wait(core, batch):
    job, service = objects()
    start = time.monotonic()
    batch.create_namespaced_job(NAMESPACE, job, _preload_content=False)
    core.create_namespaced_service(NAMESPACE, service, _preload_content=False)
    name = job["metadata"]["name"]
    url = None
    while True:
        if time.monotonic() > start + 120:
            raise SystemExit("raw path not ready within 120 s")
        if url is None:
            found = json.loads(core.read_namespaced_service(name, NAMESPACE, _preload_content=False).data)
            ingress = ((found.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            if ingress:
                url = "http://%s:8080" % ingress[0]["ip"]
        if url and ready(url):
            return name
        time.sleep(0.01)


PLAY = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Warm up the connection (its first-task cost is not the module's)
      ansible.builtin.ping:
    - name: Start
      tao.inference.tao_inference_service:
        registry_path: {registry}
        platform: kubernetes
        kubeconfig: {kubeconfig}
        context: tao-test
        namespace: {namespace}
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
        platform: kubernetes
        kubeconfig: {kubeconfig}
        context: tao-test
        namespace: {namespace}
        job_id: "{{{{ svc.job_id }}}}"
        state: absent
"""


def module_once(tmp):
    records, whole = run_playbook(tmp, PLAY.format(registry=os.path.join(tmp, "reg.json"), image=IMAGE,
                                                   kubeconfig=KUBECONFIG, namespace=NAMESPACE))
    task, floor = records["Start"], records["Floor"]
    assert task["result"]["readiness"]["state"] == "ready", task
    return task["finished"] - task["task_started"], floor["finished"] - floor["task_started"], whole


def main():
    if not os.path.exists(KUBECONFIG):
        raise SystemExit("no test cluster: run scripts/ensure-kubernetes.sh first")
    core, batch = clients()
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    raw, warm, module, floor, whole = [], [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw_once(core, batch)  # warm every path's caches
            for index in range(RUNS):
                raw.append(fresh_once(core, batch))
                warm.append(raw_once(core, batch))
                task_s, floor_s, run_s = module_once(tmp)
                module.append(task_s)
                floor.append(floor_s)
                whole.append(run_s)
                print("run %d: bare client %.3f s (warm %.3f s), module task %.3f s, ping task %.3f s (whole run "
                      "%.3f s)" % (index + 1, raw[-1], warm[-1], module[-1], floor[-1], whole[-1]))
    finally:
        core.delete_namespace(NAMESPACE, _preload_content=False)
    raw_s, warm_s, module_s = statistics.median(raw), statistics.median(warm), statistics.median(module)
    print(json.dumps({"raw_s": round(raw_s, 3), "warm_s": round(warm_s, 3), "module_s": round(module_s, 3),
                      "overhead_s": round(module_s - raw_s, 3), "overhead_vs_warm_s": round(module_s - warm_s, 3),
                      "runs": RUNS, "ansible_ping_task_s": round(statistics.median(floor), 3),
                      "playbook_run_s": round(statistics.median(whole), 3)}))


if __name__ == "__main__":
    main()
