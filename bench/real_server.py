"""NVIDIA's real TAO server (tao-inference-real:7.3.0-cpu): build time, start-to-ready, request latency.

  build_cold_s     scripts/build-real-server-image.sh under a fresh tag, so it really
                   rebuilds (venv, pip installs, tiny model, docker import); pip's cache is
                   reused, as on a machine that built it before. The image is removed after.
  build_cached_s   the same script for the real tag once it is built: the hash check only.
  start_to_ready_s one tao.inference.tao_inference_service task (IMAGE_TAO_DATASERVICES set,
                   wait: true), from the task's start to its result (median of the runs).
  p50_ms_c1/_c8    median latency of 32 greedy chat requests of 8 tokens (temperature 0,
                   max_tokens 8) sent straight to the service's 127.0.0.1 port, one at a time
                   and 8 at a time.

Everything it starts is removed; it talks only to 127.0.0.1. The last line is one JSON object.
Environment: TAO_BENCH_RUNS (start-to-ready runs, default 3), TAO_BENCH_SKIP_COLD=1 (skip the
cold build, reported as null).
"""

import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid

from playbook_runner import ROOT, run_playbook

BUILD = os.path.join(ROOT, "scripts", "build-real-server-image.sh")
IMAGE = os.environ.get("TAO_REAL_IMAGE", "tao-inference-real:7.3.0-cpu")
RUNS = int(os.environ.get("TAO_BENCH_RUNS", "3"))
REQUESTS = 32
BODY = json.dumps({"messages": [{"role": "user", "content": "What is in this image?"}],
                   "temperature": 0, "max_tokens": 8}).encode("utf-8")


def docker(*args, check=True):
    return subprocess.run(["docker"] + list(args), capture_output=True, text=True, check=check, timeout=600)


def build(image, rebuild=False):
    env = dict(os.environ, TAO_REAL_IMAGE=image)
    if rebuild:
        env["TAO_REAL_REBUILD"] = "1"
    start = time.monotonic()
    proc = subprocess.run([BUILD], capture_output=True, text=True, env=env, check=False, timeout=1800)
    elapsed = time.monotonic() - start
    if proc.returncode:
        raise SystemExit("build of %s failed:\n%s%s" % (image, proc.stdout[-2000:], proc.stderr[-4000:]))
    print("%s (%.1f s)" % (proc.stdout.strip(), elapsed))
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
        name: {name}
        network_arch: tao-dataservices
        model_path: /models/tiny-chat
        num_gpus: 0
        wait_timeout: 180
      register: svc
"""

STOP = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Stop
      tao.inference.tao_inference_service:
        registry_path: {registry}
        name: {name}
        state: absent
"""


def playbook(tmp, text, registry, name):
    return run_playbook(tmp, text.format(registry=registry, name=name), env={"IMAGE_TAO_DATASERVICES": IMAGE})[0]


def ask(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", body=BODY, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    if response.status != 200 or not data["choices"][0]["message"]["content"]:
        raise SystemExit("request failed: %s %s" % (response.status, data))
    return elapsed, data["choices"][0]["message"]["content"]


def latencies(port, concurrency):
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda _i: ask(port), range(REQUESTS)))
    answers = set(answer for _elapsed, answer in results)
    if len(answers) != 1:
        raise SystemExit("greedy answers differ: %s" % answers)
    return [elapsed for elapsed, _answer in results]


def remove_left_overs(registry):
    left = docker("ps", "-aq", "--filter", "label=tao.inference.registry=%s" % registry, check=False).stdout.split()
    if left:
        docker("rm", "-f", *left, check=False)


def main():
    build(IMAGE)  # make sure the real tag is built (normally `make real-server-image` did it)
    build_cached_s = build(IMAGE)
    build_cold_s = None
    if os.environ.get("TAO_BENCH_SKIP_COLD") != "1":
        cold_tag = "tao-inference-real:bench-cold-%s" % uuid.uuid4().hex[:8]
        try:
            build_cold_s = build(cold_tag, rebuild=True)
        finally:
            docker("image", "rm", "-f", cold_tag, check=False)

    ready, c1, c8 = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        registry = os.path.join(tmp, "registry.json")
        try:
            for index in range(RUNS):
                name = "bench-real-%d" % index
                rows = playbook(tmp, PLAY, registry, name)
                start = rows["Start"]
                result = start["result"]
                assert result["readiness"]["state"] == "ready", result
                ready.append(start["finished"] - start["task_started"])
                print("run %d: start-to-ready %.3f s (readiness %s)" % (
                    index + 1, ready[-1], " -> ".join(h["reason"] for h in result["readiness"]["history"])))
                if index == 0:
                    port = result["host_port"]
                    ask(port)  # the first generate() warms torch up
                    c1 = latencies(port, 1)
                    c8 = latencies(port, 8)
                    print("32 requests: p50 %.1f ms at concurrency 1, %.1f ms at concurrency 8"
                          % (statistics.median(c1) * 1000, statistics.median(c8) * 1000))
                playbook(tmp, STOP, registry, name)
        finally:
            remove_left_overs(registry)

    print(json.dumps({
        "build_cold_s": None if build_cold_s is None else round(build_cold_s, 1),
        "build_cached_s": round(build_cached_s, 2),
        "start_to_ready_s": round(statistics.median(ready), 2),
        "p50_ms_c1": round(statistics.median(c1) * 1000, 1),
        "p50_ms_c8": round(statistics.median(c8) * 1000, 1),
    }))


if __name__ == "__main__":
    main()
