"""Start-to-ready overhead of tao_inference_service against a raw `docker run`.

Both paths start the reference microservice (cosmos-rl command line, zero load
time) and end when GET /api/v1/health/readiness answers 200:

  raw     `docker run -d --init -p 127.0.0.1:P:8080 IMAGE sh -c "<inner command>"`,
          then a readiness poll every 10 ms (the best a hand-written loop does);
  module  one `tao.inference.tao_inference_service` task (wait: true), timed from
          the task's start to its result by a callback, inside one ansible-playbook run
          (after a ping task, so the connection's first-task cost is not counted).

Runs alternate (raw, module, raw, module...) so machine noise hits both alike.
The last line is one JSON object: {"raw_s", "module_s", "overhead_s", ...};
"ansible_ping_task_s" is a ping task in the same play: the floor any module task pays.
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

from playbook_runner import COLLECTIONS, run_playbook

sys.path.insert(0, COLLECTIONS)

from ansible_collections.tao.inference.plugins.module_utils.command import inner_command  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec  # noqa: E402

IMAGE = os.environ.get("TAO_BENCH_IMAGE", "tao-inference-emulator:latest")
RUNS = int(os.environ.get("TAO_BENCH_RUNS", "7"))
PORT = 8190


def ready(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health/readiness" % port, timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def raw_once():
    job_id = str(uuid.uuid4())
    spec = build_spec({"network_arch": "cosmos-rl", "model_path": "hf_model://nvidia/Cosmos-Reason1-7B",
                       "num_gpus": 0, "image": IMAGE}, {})
    command = inner_command(spec, job_id)
    start = time.monotonic()
    subprocess.run(["docker", "run", "-d", "--init", "--name", job_id, "-e", "TAO_EMULATOR_LOAD_SECONDS=0",
                    "-p", "127.0.0.1:%d:8080" % PORT, IMAGE, "/bin/sh", "-c", command],
                   check=True, capture_output=True)
    deadline = start + 60
    while not ready(PORT):
        if time.monotonic() > deadline:
            raise SystemExit("raw path not ready within 60 s")
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    subprocess.run(["docker", "rm", "-f", job_id], check=True, capture_output=True)
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
        network_arch: cosmos-rl
        model_path: hf_model://nvidia/Cosmos-Reason1-7B
        image: {image}
        num_gpus: 0
        host_port: {port}
        env: {{TAO_EMULATOR_LOAD_SECONDS: "0"}}
      register: svc
    - name: Floor
      ansible.builtin.ping:
    - name: Stop
      tao.inference.tao_inference_service:
        registry_path: {registry}
        job_id: "{{{{ svc.job_id }}}}"
        state: absent
"""


def module_once(tmp):
    records, whole = run_playbook(tmp, PLAY.format(registry=os.path.join(tmp, "reg.json"), image=IMAGE, port=PORT))
    task, floor = records["Start"], records["Floor"]
    assert task["result"]["readiness"]["state"] == "ready", task
    return task["finished"] - task["task_started"], floor["finished"] - floor["task_started"], whole


def main():
    subprocess.run(["docker", "image", "inspect", IMAGE], check=True, capture_output=True)
    raw, module, floor, whole = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        raw_once()  # warm the engine's caches for both paths
        for index in range(RUNS):
            raw.append(raw_once())
            task_s, floor_s, run_s = module_once(tmp)
            module.append(task_s)
            floor.append(floor_s)
            whole.append(run_s)
            print("run %d: raw %.3f s, module task %.3f s, ping task %.3f s (whole ansible-playbook run %.3f s)"
                  % (index + 1, raw[-1], module[-1], floor[-1], whole[-1]))
    raw_s = statistics.median(raw)
    module_s = statistics.median(module)
    print(json.dumps({"raw_s": round(raw_s, 3), "module_s": round(module_s, 3),
                      "overhead_s": round(module_s - raw_s, 3), "runs": RUNS,
                      "ansible_ping_task_s": round(statistics.median(floor), 3),
                      "playbook_run_s": round(statistics.median(whole), 3)}))


if __name__ == "__main__":
    main()
