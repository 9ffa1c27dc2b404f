"""Start-to-ready overhead of tao_inference_service with platform brev, against the bare sequence of calls.

Both paths start the reference microservice (cosmos-rl command line, zero load time) on one RUNNING
instance of the stand-in Brev platform (scripts/ensure-brev.sh), reached through a local SSH tunnel, and
end when GET /api/v1/health/readiness answers 200 through it:

  raw     what a user types: `brev ls --json` (the instance is RUNNING), `brev refresh` (Brev's SSH
          configuration), `docker -H ssh://<instance> run -d --init -p 127.0.0.1::8080 ...`, `docker port`,
          `ssh -N -L <local>:127.0.0.1:<port> <instance>`, then a readiness poll every 10 ms;
  module  one `tao.inference.tao_inference_service` task (brev_instance given, brev_expose tunnel, wait:
          true), timed from the task's start to its result by a callback, inside one ansible-playbook run
          (after a ping task, so the connection's first-task cost is not counted).

Runs alternate (raw, module, raw...) so machine noise hits both alike. The last line is one JSON object:
{"raw_s", "module_s", "overhead_s", ...}; "ansible_ping_task_s" is a ping task in the same play.
"""

import json
import os
import socket
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

from ansible_collections.tao.inference.plugins.module_utils.command import inner_command  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec  # noqa: E402

IMAGE = os.environ.get("TAO_BENCH_IMAGE", "tao-inference-emulator:latest")
RUNS = int(os.environ.get("TAO_BENCH_RUNS", "5"))
SSH_CONFIG = os.path.join(ROOT, ".build", "brev", "ssh_config")
INSTANCE = "tao-bench-%s" % uuid.uuid4().hex[:6]


def setup():
    bin_dir = subprocess.run([os.path.join(ROOT, "scripts", "ensure-brev.sh")], capture_output=True, text=True,
                             check=True).stdout.strip()
    # The stand-in's `ssh` reads Brev's configuration as a user's ~/.ssh/config includes it, so the docker
    # CLI's own ssh reaches the instance as it does on a real Brev user's machine.
    ssh_bin = os.path.join(os.path.dirname(bin_dir), "ssh-bin")
    os.environ["PATH"] = os.pathsep.join([bin_dir, ssh_bin, os.environ["PATH"]])
    brev("login", "--token", "tao-bench-token")
    brev("create", INSTANCE, "--type", "g6.xlarge")
    brev("refresh")


def brev(*words):
    return subprocess.run(["brev"] + list(words), capture_output=True, text=True, check=True,
                          stdin=subprocess.DEVNULL).stdout


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    docker = ["docker", "-H", "ssh://%s" % INSTANCE]
    env = dict(os.environ)
    start = time.monotonic()
    json.loads(brev("ls", "--json"))
    brev("refresh")
    subprocess.run(docker + ["run", "-d", "--init", "--name", job_id, "-e", "TAO_EMULATOR_LOAD_SECONDS=0",
                             "-p", "127.0.0.1::8080", IMAGE, "/bin/sh", "-c", command],
                   check=True, capture_output=True, env=env)
    remote = subprocess.run(docker + ["port", job_id, "8080/tcp"], check=True, capture_output=True, text=True,
                            env=env).stdout.split(":")[-1].strip()
    local = free_port()
    tunnel = subprocess.Popen(["ssh", "-F", SSH_CONFIG, "-N", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                               "-L", "127.0.0.1:%d:127.0.0.1:%s" % (local, remote), INSTANCE],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready(local):
            if time.monotonic() > start + 60:
                raise SystemExit("raw path not ready within 60 s")
            time.sleep(0.01)
        elapsed = time.monotonic() - start
    finally:
        tunnel.kill()
        tunnel.wait()
        subprocess.run(docker + ["rm", "-f", job_id], capture_output=True, env=env, check=False)
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
        platform: brev
        brev_instance: {instance}
        ssh_config: {ssh_config}
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
        platform: brev
        ssh_config: {ssh_config}
        job_id: "{{{{ svc.job_id }}}}"
        state: absent
"""


def module_once(tmp):
    records, whole = run_playbook(tmp, PLAY.format(registry=os.path.join(tmp, "reg.json"), image=IMAGE,
                                                   instance=INSTANCE, ssh_config=SSH_CONFIG))
    task, floor = records["Start"], records["Floor"]
    assert task["result"]["readiness"]["state"] == "ready", task
    return task["finished"] - task["task_started"], floor["finished"] - floor["task_started"], whole


def main():
    setup()
    raw, module, floor, whole = [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw_once()  # warm both paths' caches
            for index in range(RUNS):
                raw.append(raw_once())
                task_s, floor_s, run_s = module_once(tmp)
                module.append(task_s)
                floor.append(floor_s)
                whole.append(run_s)
                print("run %d: bare calls %.3f s, module task %.3f s, ping task %.3f s (whole run %.3f s)"
                      % (index + 1, raw[-1], module[-1], floor[-1], whole[-1]))
    finally:
        brev("delete", INSTANCE)
    raw_s, module_s = statistics.median(raw), statistics.median(module)
    print(json.dumps({"raw_s": round(raw_s, 3), "module_s": round(module_s, 3), "overhead_s": round(module_s - raw_s, 3),
                      "runs": RUNS, "ansible_ping_task_s": round(statistics.median(floor), 3),
                      "playbook_run_s": round(statistics.median(whole), 3)}))


if __name__ == "__main__":
    main()
