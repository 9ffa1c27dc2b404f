"""The reference microservice image, built offline and run on the local Docker engine.

Builds ``tao-inference-emulator:latest`` with scripts/build-emulator-image.sh,
then runs one container per container command line through
``sh -c "umask 0 && <cmd>"`` (as the collection does), published on a random
127.0.0.1 port, and checks readiness and one chat request.  Containers are
always removed.  Like every integration test, it is skipped (by conftest) only
when there is no Docker engine or no image to run.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from .conftest import docker

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-emulator-image.sh"
IMAGE = "tao-inference-emulator:latest"
HASH_LABEL = "tao.inference.emulator.hash"
SECRET = "hf_IntegrationSecretValue987"
PNG_URI = "data:image/png;base64,iVBORw0KGgo="
READY_TIMEOUT = 30.0


def _blob(value: Dict[str, Any]) -> str:
    """The collection's quoting: compact JSON, then shlex.quote."""
    return shlex.quote(json.dumps(value, separators=(",", ":")))


def _request(method: str, url: str, body: Optional[Dict[str, Any]] = None) -> Tuple[int, Dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_readiness(base: str, want: int) -> Dict[str, Any]:
    """Poll readiness until it answers ``want`` (connection refused: keep waiting)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, body = _request("GET", base + "/api/v1/health/readiness")
            last = (status, body)
            if status == want and (want == 200 or body.get("reason") == "model_load_failed"):
                return body
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"readiness never answered {want} within {READY_TIMEOUT}s; last: {last}")


@pytest.fixture(scope="module", name="image")
def image_fixture() -> str:
    """Build the image (or find it cached) once for the module."""
    first = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=300,
                           check=False, cwd="/")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"{IMAGE} ") and first.stdout.count("\n") == 1, first.stdout
    assert " built " in first.stdout or " cached " in first.stdout
    second = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=300,
                            check=False, cwd=str(REPO_ROOT / "tests"))
    assert second.returncode == 0, second.stderr
    assert " cached " in second.stdout, second.stdout
    label = docker("image", "inspect", "--format", f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', IMAGE)
    assert len(label.stdout.strip()) == 64
    return IMAGE


class Container:
    """One emulator container published on 127.0.0.1 (removed by :meth:`remove`)."""

    def __init__(self, image: str, command: str, env: Dict[str, str]) -> None:
        self.name = f"tao-emulator-test-{uuid.uuid4().hex[:12]}"
        env_args: List[str] = []
        for key, value in env.items():
            env_args += ["-e", f"{key}={value}"]
        docker("run", "-d", "--init", "--name", self.name, "-p", "127.0.0.1::8080", *env_args,
               image, "sh", "-c", f"umask 0 && {command}")
        port = docker("port", self.name, "8080/tcp").stdout.strip().splitlines()[0]
        host, _sep, number = port.rpartition(":")
        assert host == "127.0.0.1", port
        self.base = f"http://127.0.0.1:{number}"

    def logs(self) -> str:
        """Everything the container printed."""
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        """Force-remove the container."""
        docker("rm", "-f", self.name, check=False)


def _job(arch: str, model_path: str) -> Dict[str, Any]:
    return {"job_id": str(uuid.uuid4()), "specs": {"model_path": model_path}, "neural_network_name": arch}


ENV_PAYLOAD = {"TAO_EXECUTION_BACKEND": "local-docker", "TAO_API_JOB_ID": "job", "CLOUD_BASED": "False"}

COMMANDS = {
    "cosmos-rl": (
        "cosmos-rl-inference-microservice --job {job} --docker_env_vars {env}",
        "hf_model://nvidia/Cosmos-Reason1-7B",
    ),
    "cosmos-predict2.5": (
        "cosmos_predict inference_microservice start --model base-2b --output-dir /tmp/outputs --port 8080",
        "base-2b",
    ),
    "tao-dataservices": (
        "python -m nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server"
        " --port 8080 --job {job} --docker_env_vars {env}",
        "hf_model://Qwen/Qwen2.5-0.5B-Instruct",
    ),
}


@pytest.mark.parametrize("arch", list(COMMANDS))
def test_container_command_line(image: str, arch: str) -> None:
    """Each command line starts in the image, becomes ready and answers a chat request."""
    template, model = COMMANDS[arch]
    command = template.format(job=_blob(_job(arch, model)), env=_blob(ENV_PAYLOAD))
    container: Optional[Container] = None
    try:
        container = Container(image, command, {"TAO_EMULATOR_LOAD_SECONDS": "0.5", "HF_TOKEN": SECRET})
        _wait_readiness(container.base, 200)
        content: List[Dict[str, Any]] = [{"type": "text", "text": "Describe the scene."}]
        if arch == "cosmos-rl":
            content.insert(0, {"type": "image_url", "image_url": {"url": PNG_URI}})
        status, body = _request("POST", container.base + "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": content}], "max_tokens": 16})
        assert status == 200, body
        assert body["model"] == model and "usage" not in body
        answer = body["choices"][0]["message"]["content"]
        if arch == "cosmos-predict2.5":
            assert answer.startswith("data:video/mp4;base64,")
        else:
            assert answer.startswith(f"[tao-inference reference microservice] {arch} answered 'Describe the scene.'")
        status, info = _request("GET", container.base + "/api/v1/status")
        assert status == 200 and info["network_arch"] == arch and info["hf_token_set"] is True
        logs = container.logs()
        assert '"POST /v1/chat/completions" 200' in logs
        assert SECRET not in logs and SECRET not in json.dumps(info)
    finally:
        if container is not None:
            container.remove()


def test_failed_load_in_container(image: str) -> None:
    """A missing model path: readiness 503 model_load_failed, the cause only in the container log."""
    command = COMMANDS["cosmos-rl"][0].format(
        job=_blob(_job("cosmos-rl", "/workspace/missing-model")), env=_blob(ENV_PAYLOAD))
    container: Optional[Container] = None
    try:
        container = Container(image, command, {"TAO_EMULATOR_LOAD_SECONDS": "0.2"})
        body = _wait_readiness(container.base, 503)
        assert body["message"] == "Model failed to load: Model loading failed"
        assert "ERROR: model load failed: model path not found: /workspace/missing-model" in container.logs()
    finally:
        if container is not None:
            container.remove()
