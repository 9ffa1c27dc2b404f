"""NVIDIA's real TAO inference server, driven through ansible-playbook on the local Docker engine.

The image ``tao-inference-real:7.3.0-cpu`` (scripts/build-real-server-image.sh) holds
``nvidia-tao-core`` 7.3.0 from PyPI, unmodified, and a tiny random-weight Llama model at
/models/tiny-chat. The collection picks it the way a user would: ``IMAGE_TAO_DATASERVICES``
in the environment, the normal tao-dataservices command line, ``num_gpus: 0``.

These tests never skip for a missing image: the fixture builds it (cached by a content
hash, so a built image costs nothing), and a build that cannot happen (no PyPI) fails them
loudly with the build's own output.
"""

import os
import subprocess
import time

import pytest

from .conftest import ROOT, docker

REAL_IMAGE = os.environ.get("TAO_REAL_IMAGE", "tao-inference-real:7.3.0-cpu")
BUILD_SCRIPT = os.path.join(ROOT, "scripts", "build-real-server-image.sh")
MODEL = "/models/tiny-chat"
EMPTY_MODEL = "/models/empty"
# Not-ready answers a caller may see before the real server is ready (CONTRACT section 5).
NOT_READY = {"unreachable", "server_initializing", "model_not_loaded", "model_loading"}


def ensure_real_image():
    """Build the real-server image unless the cached one matches; fail loudly otherwise."""
    env = dict(os.environ, TAO_REAL_IMAGE=REAL_IMAGE)
    try:
        proc = subprocess.run([BUILD_SCRIPT], capture_output=True, text=True, env=env, timeout=1800,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail("could not build %s: %s" % (REAL_IMAGE, exc), pytrace=False)
    if proc.returncode != 0:
        pytest.fail("building %s failed (the real-server tests need PyPI through pip's configuration):\n%s%s"
                    % (REAL_IMAGE, proc.stdout[-2000:], proc.stderr[-4000:]), pytrace=False)
    return REAL_IMAGE


@pytest.fixture(scope="module")
def real_image():
    return ensure_real_image()


START = """\
- name: Start
  tao.inference.tao_inference_service:
    name: {name}
    network_arch: tao-dataservices
    model_path: {model}
    num_gpus: 0
    wait_timeout: {wait_timeout}
  register: svc
"""

ASK = """\
- name: {title}
  tao.inference.tao_inference_request:
    name: {name}
    prompt: {prompt}
    sampling: {{temperature: 0, max_tokens: 8}}
  register: answer
"""

STOP = """\
- name: Stop
  tao.inference.tao_inference_service:
    name: {name}
    state: absent
"""


def _env(image):
    return {"IMAGE_TAO_DATASERVICES": image}


def _elapsed(record):
    return record["finished"] - record["task_started"]


def test_real_server_start_wait_ask_stop(harness, real_image):
    name = "real-tiny"
    run = harness.play(
        START.format(name=name, model=MODEL, wait_timeout=120)
        + ASK.format(title="Ask", name=name, prompt="What is in this image?")
        + ASK.format(title="Ask again", name=name, prompt="What is in this image?"),
        env=_env(real_image))
    assert run.rc == 0, run.output
    started = run.task("Start")["result"]
    assert started["image"] == real_image  # from IMAGE_TAO_DATASERVICES, not the image option
    assert started["network_arch"] == "tao-dataservices"

    # The module watched a real load: some not-ready state first, then ready.
    assert started["readiness"]["state"] == "ready", started["readiness"]
    reasons = [item["reason"] for item in started["readiness"]["history"]]
    assert reasons[-1] == "ready", reasons
    assert set(reasons[:-1]) & NOT_READY, reasons
    assert set(reasons[:-1]) <= NOT_READY, reasons

    # It is NVIDIA's server that answered, with the tiny model: greedy, so the same words twice.
    first = run.task("Ask")["result"]
    second = run.task("Ask again")["result"]
    assert first["status"] == 200 and second["status"] == 200
    assert first["content"].strip(), first
    assert first["content"] == second["content"]
    assert "reference microservice" not in first["content"]
    assert {item["field"]: item["value"] for item in first["sampling_applied"]}["max_tokens"] == 8
    logs = docker("logs", started["job_id"])
    assert "HuggingFaceInferenceMicroserviceServer model loaded successfully" in logs.stdout + logs.stderr

    # A second playbook run gets the same answer, then stops the service: nothing is left.
    again = harness.play(ASK.format(title="Ask later", name=name, prompt="What is in this image?")
                         + STOP.format(name=name), env=_env(real_image))
    assert again.rc == 0, again.output
    assert again.task("Ask later")["result"]["content"] == first["content"]
    assert again.task("Stop")["status"] == "changed"
    assert harness.containers() == [] and harness.entries() == {}
    assert docker("inspect", started["job_id"], check=False).returncode != 0


def test_real_server_load_failure_fails_fast_with_the_real_reason(harness, real_image):
    began = time.monotonic()
    run = harness.play(START.format(name="real-broken", model=EMPTY_MODEL, wait_timeout=300),
                       env=_env(real_image))
    elapsed = time.monotonic() - began
    assert run.rc != 0, run.output
    record = run.task("Start")
    msg = record["result"]["msg"]
    assert "failed to start: model_load_failed" in msg, msg
    # The readiness body only says "Model failed to load: Model loading failed"; the real cause
    # is in the container log, which the collection appends.
    assert "Model failed to load: Model loading failed" in msg, msg
    assert "Unrecognized model in %s" % EMPTY_MODEL in msg, msg
    assert "stopped and removed from the registry" in msg, msg
    # Within seconds of the server's ~4 s of imports, not after wait_timeout (300 s).
    assert _elapsed(record) < 30, _elapsed(record)
    assert elapsed < 60, elapsed
    assert harness.containers() == [] and harness.entries() == {}
