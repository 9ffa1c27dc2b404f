"""Batch requests at scale: 256 prompts three ways, and the module's memory with large videos.

One reference microservice container (cosmos-rl command line, TAO_EMULATOR_RESPONSE_MS=20,
published on 127.0.0.1 only) answers every request. Each prompt carries playbooks/files/demo.png;
the three ways send the same JSON body:

  uri_loop  a playbook `loop:` over `ansible.builtin.uri`, one POST per prompt (the loop task's time);
  batch     one `tao.inference.tao_inference_request` task with `requests:` and concurrency 16,
            timed as the module reports it (summary.elapsed), the whole ansible-playbook run beside it;
  httpx     a bare `httpx.AsyncClient` script, the same concurrency, bodies built beforehand.

batch and httpx run REPEATS times, alternating; their medians are reported. Then the module sends
64 requests, each with its own 20 MiB video file, and reports its own peak RSS
(summary.max_rss_mib, `ru_maxrss` of the module's process).

The last line is one JSON object: {"uri_loop_s", "batch_s", "httpx_s", "speedup_vs_uri",
"ratio_vs_httpx", "peak_mib", ...}. The container is removed at the end, whatever happens.
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

from playbook_runner import COLLECTIONS, ROOT, run_playbook

sys.path.insert(0, COLLECTIONS)

from ansible_collections.tao.inference.plugins.module_utils import catalog, readiness  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.chat.messages import (  # noqa: E402
    build_body, build_messages,
)
from ansible_collections.tao.inference.plugins.module_utils.chat.sending import JSON_HEADERS  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.command import inner_command  # noqa: E402
from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec  # noqa: E402

IMAGE = os.environ.get("TAO_BENCH_IMAGE", "tao-inference-emulator:latest")
PROMPTS = 256
CONCURRENCY = 16
RESPONSE_MS = 20
REPEATS = int(os.environ.get("TAO_BENCH_RUNS", "3"))
VIDEOS = 64
VIDEO_MIB = 20
PNG = os.path.join(ROOT, "playbooks", "files", "demo.png")
RUN_TIMEOUT = 900

URI_PLAY = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Warm up the connection
      ansible.builtin.ping:
    - name: Loop
      ansible.builtin.uri:
        url: "{{ url }}"
        method: POST
        body_format: json
        body: "{{ item }}"
        timeout: 300
      loop: "{{ bodies }}"
      loop_control:
        label: "{{ item.messages[0].content[1].text }}"
"""

BATCH_PLAY = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Batch
      tao.inference.tao_inference_request:
        registry_path: "{{ registry }}"
        job_id: "{{ job_id }}"
        requests: "{{ batch }}"
        sampling: {}
        concurrency: %d
        return_content_max: 100
""" % CONCURRENCY


def docker(*args):
    return subprocess.run(["docker"] + list(args), check=True, capture_output=True, text=True, timeout=120).stdout


def container_of(job_id):
    return "tao-bench-%s" % job_id


def start_service(job_id):
    spec = build_spec({"network_arch": "cosmos-rl", "model_path": "hf_model://nvidia/Cosmos-Reason1-7B",
                       "num_gpus": 0, "image": IMAGE}, {})
    docker("run", "-d", "--init", "--name", container_of(job_id), "--label", "tao.inference.bench=batch_requests",
           "-e", "TAO_EMULATOR_LOAD_SECONDS=0", "-e", "TAO_EMULATOR_RESPONSE_MS=%d" % RESPONSE_MS,
           "-p", "127.0.0.1::8080", IMAGE, "/bin/sh", "-c", inner_command(spec, job_id))
    port = int(docker("port", container_of(job_id), "8080/tcp").split()[0].rsplit(":", 1)[1])
    base = "http://127.0.0.1:%d" % port
    if not readiness.wait_ready(base, 60).ready:
        raise SystemExit("the reference microservice was not ready within 60 s")
    return base


def write_registry(path, job_id, base):
    entry = {"job_id": job_id, "network_arch": "cosmos-rl", "host_url": base, "platform": "local-docker",
             "started_at": "2000-01-01T00:00:00Z", "name": "bench"}
    with open(path, "w") as handle:
        json.dump({job_id: entry, "latest": job_id, "schema_version": catalog.REGISTRY_SCHEMA_VERSION}, handle)


def uri_loop(tmp, url, bodies):
    records, _whole = run_playbook(tmp, URI_PLAY, {"url": url, "bodies": bodies}, timeout=RUN_TIMEOUT)
    loop = records["Loop"]
    assert all(r["status"] == 200 for r in loop["result"]["results"]), "a uri request failed"
    return loop["finished"] - loop["task_started"]


def module_batch(tmp, registry, job_id, requests):
    extra_vars = {"registry": registry, "job_id": job_id, "batch": requests}
    records, whole = run_playbook(tmp, BATCH_PLAY, extra_vars, timeout=RUN_TIMEOUT)
    summary = records["Batch"]["result"]["summary"]
    assert summary["ok"] == len(requests), summary
    return summary, whole


async def bare_httpx(url, bodies):
    started = time.monotonic()
    semaphore = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:
        async def one(body):
            async with semaphore:
                response = await client.post(url, content=body, headers=JSON_HEADERS)
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"]
        answers = await asyncio.gather(*[one(body) for body in bodies])
    assert len(answers) == len(bodies)
    return time.monotonic() - started


def make_videos(folder):
    block = os.urandom(1 << 20)
    paths = []
    for index in range(VIDEOS):
        path = os.path.join(folder, "clip%02d.mp4" % index)
        with open(path, "wb") as handle:
            handle.write(b"\x00\x00\x00\x18ftypmp42%08d" % index)
            for _mib in range(VIDEO_MIB):
                handle.write(block)
        paths.append(path)
    return paths


def compare(tmp, registry, job_id, url):
    """uri loop once, then module batch and bare httpx REPEATS times, alternating; medians."""
    prompts = ["prompt %d" % i for i in range(PROMPTS)]
    bodies = [build_body("cosmos-rl", build_messages("cosmos-rl", p, media=[PNG]), {})[0] for p in prompts]
    encoded = [json.dumps(body).encode("utf-8") for body in bodies]
    requests = [{"id": str(i), "prompt": p, "media": [PNG]} for i, p in enumerate(prompts)]
    asyncio.run(bare_httpx(url, encoded[:32]))  # warm the service

    uri_s = uri_loop(tmp, url, bodies)
    print("uri loop: %d POSTs in %.2f s" % (PROMPTS, uri_s))
    batch_s, httpx_s = [], []
    for index in range(REPEATS):
        summary, whole = module_batch(tmp, registry, job_id, requests)
        batch_s.append(summary["elapsed"])
        httpx_s.append(asyncio.run(bare_httpx(url, encoded)))
        figures = (index + 1, batch_s[-1], summary["latency_p50"], summary["latency_p95"],
                   summary["requests_per_second"], whole, httpx_s[-1])
        print("run %d: batch %.3f s (p50 %.3f s, p95 %.3f s, %.0f requests/s; whole ansible-playbook run %.2f s), "
              "bare httpx %.3f s" % figures)
    return uri_s, statistics.median(batch_s), statistics.median(httpx_s)


def peak_memory(tmp, registry, job_id):
    """The module's own peak RSS with VIDEOS requests, each carrying its own VIDEO_MIB video."""
    heavy = [{"id": "v%d" % i, "prompt": "clip %d" % i, "media": [path]} for i, path in enumerate(make_videos(tmp))]
    summary, whole = module_batch(tmp, registry, job_id, heavy)
    print("memory: %d requests, each with its own %d MiB video: %.2f s, module peak RSS %.1f MiB (whole run %.2f s)"
          % (VIDEOS, VIDEO_MIB, summary["elapsed"], summary["max_rss_mib"], whole))
    return summary["max_rss_mib"]


def main():
    docker("image", "inspect", IMAGE)
    job_id = str(uuid.uuid4())  # the registry takes only the lower-case UUIDs the collection gives
    with tempfile.TemporaryDirectory(prefix="tao-bench-") as tmp:
        try:
            base = start_service(job_id)
            registry = os.path.join(tmp, "registry.json")
            write_registry(registry, job_id, base)
            uri_s, batch_s, httpx_s = compare(tmp, registry, job_id, catalog.chat_url_of({"host_url": base}))
            peak_mib = peak_memory(tmp, registry, job_id)
        finally:
            subprocess.run(["docker", "rm", "-f", container_of(job_id)], capture_output=True, check=False, timeout=120)
    print(json.dumps({
        "uri_loop_s": round(uri_s, 3), "batch_s": round(batch_s, 3), "httpx_s": round(httpx_s, 3),
        "speedup_vs_uri": round(uri_s / batch_s, 1), "ratio_vs_httpx": round(batch_s / httpx_s, 3),
        "peak_mib": peak_mib, "prompts": PROMPTS, "concurrency": CONCURRENCY, "response_ms": RESPONSE_MS,
        "runs": REPEATS, "peak_requests": VIDEOS, "peak_video_mib": VIDEO_MIB}))


if __name__ == "__main__":
    main()
