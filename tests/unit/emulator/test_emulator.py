"""Tests of the reference TAO inference microservice (tests/emulator/tao_emulator).

Servers run in-process (a thread serving on 127.0.0.1 with a free port) or as a
subprocess started with ``TAO_EMULATOR_HOST=127.0.0.1`` and ``--port 0``.  Every
wait is bounded.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

EMULATOR_DIR = Path(__file__).resolve().parents[2] / "emulator"
sys.path.insert(0, str(EMULATOR_DIR))

# pylint: disable=wrong-import-position,import-error
from tao_emulator import COSMOS_PREDICT, COSMOS_RL, TAO_DATASERVICES  # noqa: E402
from tao_emulator import cli  # noqa: E402
from tao_emulator.server import make_server  # noqa: E402
from tao_emulator.service import EmulatorService, EventLog, JobConfig, Settings  # noqa: E402

HF_MODEL = "hf_model://nvidia/Cosmos-Reason1-7B"
JOB_ID = "0b4e6a3c-6d7f-4b56-9f0e-3f2a1c9d8e77"
SECRET = "hf_SuperSecretTokenValue123"
ENV_PAYLOAD = {"TAO_EXECUTION_BACKEND": "local-docker", "TAO_API_JOB_ID": JOB_ID, "CLOUD_BASED": "False"}
PNG_URI = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()
MP4_URI = "data:video/mp4;base64," + base64.b64encode(b"\x00\x00\x00\x18ftypmp42").decode()
GENERIC_LOAD_MESSAGE = "Model failed to load: Model loading failed"
TIMEOUT = 10.0


# -- helpers -----------------------------------------------------------------


def request(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: Optional[bytes] = None,
    content_type: Optional[str] = "application/json",
) -> Tuple[int, Any]:
    """Send one request; return (status, decoded JSON body)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if content_type is not None and data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            status, payload, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, payload, headers = err.code, err.read(), err.headers
    assert headers.get("Content-Type") == "application/json", payload
    return status, json.loads(payload)


def chat(base: str, body: Any, **kwargs: Any) -> Tuple[int, Any]:
    """POST to the chat completions route."""
    return request("POST", base + "/v1/chat/completions", body, **kwargs)


def user(*items: Dict[str, Any]) -> Dict[str, Any]:
    """A user message with a list of content items."""
    return {"role": "user", "content": list(items)}


def text(value: str) -> Dict[str, Any]:
    """A text content item."""
    return {"type": "text", "text": value}


def image(url: str) -> Dict[str, Any]:
    """An image_url content item."""
    return {"type": "image_url", "image_url": {"url": url}}


def video(url: str) -> Dict[str, Any]:
    """A video_url content item."""
    return {"type": "video_url", "video_url": {"url": url}}


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def wait_ready(base: str) -> None:
    """Wait for readiness 200."""
    wait_until(lambda: request("GET", base + "/api/v1/health/readiness")[0] == 200)


class Running:  # pylint: disable=too-few-public-methods
    """An in-process emulator serving on 127.0.0.1."""

    def __init__(self, service: EmulatorService, log: io.StringIO) -> None:
        self.service = service
        self.log = log
        self.server = make_server(service, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        service.start_loading()

    def close(self) -> None:
        """Stop serving and release the socket."""
        self.service.stop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(name="emulator")
def emulator_fixture() -> Iterator[Callable[..., Running]]:
    """Factory: start an in-process emulator; all are stopped at teardown."""
    running: List[Running] = []

    def start(  # pylint: disable=too-many-arguments
        flavor: str = COSMOS_RL,
        *,
        model_path: str = HF_MODEL,
        load_seconds: float = 0.0,
        load_fail: Optional[str] = None,
        response_ms: float = 0.0,
        environ: Optional[Dict[str, str]] = None,
        docker_env_vars: Optional[Dict[str, Any]] = None,
        ready: bool = True,
    ) -> Running:
        job = JobConfig(
            flavor=flavor,
            entrypoint="test",
            model_path=model_path,
            job_id=JOB_ID,
            network_arch=flavor,
            docker_env_vars=dict(ENV_PAYLOAD if docker_env_vars is None else docker_env_vars),
        )
        settings = Settings(load_seconds=load_seconds, load_fail=load_fail, response_ms=response_ms, host="127.0.0.1")
        log = io.StringIO()
        service = EmulatorService(job, settings, environ=environ or {}, log=EventLog(log))
        instance = Running(service, log)
        running.append(instance)
        if ready:
            wait_ready(instance.base)
        return instance

    yield start
    for instance in running:
        instance.close()


# -- lifecycle -----------------------------------------------------------------


def test_loading_then_ready(emulator: Callable[..., Running]) -> None:
    """While loading: readiness 503 model_loading, chat 202; then 200 ready."""
    emu = emulator(load_seconds=0.6, ready=False)
    status, body = request("GET", emu.base + "/api/v1/health/readiness")
    assert status == 503
    assert body["status"] == "not_ready" and body["reason"] == "model_loading"
    assert body["message"] and body["job_id"] == JOB_ID

    status, body = chat(emu.base, {"messages": [user(image(PNG_URI), text("hi"))]})
    assert status == 202
    assert body["error"]["type"] == "model_loading" and body["error"]["message"]

    status, body = request("GET", emu.base + "/api/v1/health/liveness")
    assert status == 200 and body["progress"]["stage"] == "loading_model"

    wait_ready(emu.base)
    status, body = request("GET", emu.base + "/api/v1/health/readiness")
    assert (status, body["status"]) == (200, "ready")
    status, body = request("GET", emu.base + "/api/v1/health/liveness")
    assert status == 200 and body["progress"]["stage"] == "ready" and body["model_loaded"] is True


@pytest.mark.parametrize(
    ("kwargs", "cause"),
    [
        ({"load_fail": "CUDA out of memory (emulated)"}, "CUDA out of memory (emulated)"),
        ({"model_path": "/nonexistent/tao/model"}, "model path not found: /nonexistent/tao/model"),
    ],
    ids=["load-fail-env", "missing-model-path"],
)
def test_failed_load(emulator: Callable[..., Running], kwargs: Dict[str, Any], cause: str) -> None:
    """A failed load keeps serving: readiness 503 model_load_failed, chat 503, cause only in the log."""
    emu = emulator(load_seconds=0.05, ready=False, **kwargs)
    wait_until(lambda: request("GET", emu.base + "/api/v1/health/liveness")[1]["progress"]["stage"] == "error")

    status, body = request("GET", emu.base + "/api/v1/health/readiness")
    assert status == 503
    assert body["reason"] == "model_load_failed" and body["message"] == GENERIC_LOAD_MESSAGE

    status, body = chat(emu.base, {"messages": [user(image(PNG_URI), text("hi"))]})
    assert status == 503 and body["error"]["type"] == "model_load_error"
    assert body["error"]["message"] == GENERIC_LOAD_MESSAGE

    status, body = request("GET", emu.base + "/api/v1/status")
    assert status == 200 and body["state"] == "load_failed"
    assert cause not in json.dumps(body)
    assert f"ERROR: model load failed: {cause}\n" in emu.log.getvalue()


def test_existing_local_model_path_loads(emulator: Callable[..., Running], tmp_path: Path) -> None:
    """An absolute model path that exists loads like an hf_model:// one."""
    emu = emulator(model_path=str(tmp_path))
    status, body = request("GET", emu.base + "/api/v1/status")
    assert status == 200 and body["state"] == "ready" and body["model_path"] == str(tmp_path)


# -- chat completions ------------------------------------------------------------


def test_cosmos_rl_answer(emulator: Callable[..., Running]) -> None:
    """200 chat.completion: one choice, stop, no usage, model = model path, deterministic content."""
    emu = emulator(COSMOS_RL)
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            user(image(PNG_URI), text("What is in the picture?")),
            user(video(MP4_URI), text("ignored second user message")),
        ],
        "stream": True,
    }
    status, first = chat(emu.base, body)
    assert status == 200
    assert set(first) == {"id", "object", "created", "model", "choices"}
    assert first["id"].startswith("chatcmpl-") and first["object"] == "chat.completion"
    assert isinstance(first["created"], int) and first["model"] == HF_MODEL
    assert first["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "[tao-inference reference microservice] cosmos-rl answered 'What is in the picture?' "
                "with 1 image(s), 0 video(s); max_tokens=1024 temperature=0.7; system='Be brief.'",
            },
            "finish_reason": "stop",
        }
    ]
    status, second = chat(emu.base, body)
    assert status == 200 and second["choices"] == first["choices"]


def test_cosmos_rl_counts_media_and_sampling(emulator: Callable[..., Running]) -> None:
    """http(s) URLs are accepted unfetched; sampling values show in the answer."""
    emu = emulator(COSMOS_RL)
    status, body = chat(emu.base, {
        "messages": [user(video("https://example.com/clips/a.MP4?sig=1"), image("http://example.com/b.jpeg"),
                          text("Describe."))],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
    })
    assert status == 200
    assert body["choices"][0]["message"]["content"] == (
        "[tao-inference reference microservice] cosmos-rl answered 'Describe.' with 1 image(s), 1 video(s); "
        "max_tokens=64 temperature=0.2 top_p=0.9"
    )


def test_tao_dataservices_text_only(emulator: Callable[..., Running]) -> None:
    """tao-dataservices needs no media; a string content is the prompt."""
    emu = emulator(TAO_DATASERVICES)
    status, body = chat(emu.base, {"messages": [{"role": "user", "content": "Hello there"}]})
    assert status == 200
    assert body["choices"][0]["message"]["content"] == (
        "[tao-inference reference microservice] tao-dataservices answered 'Hello there' with 0 image(s), "
        "0 video(s); max_tokens=1024 temperature=0.7"
    )


def _predict_video(body: Dict[str, Any]) -> bytes:
    content = body["choices"][0]["message"]["content"]
    prefix = "data:video/mp4;base64,"
    assert content.startswith(prefix)
    return base64.b64decode(content[len(prefix):], validate=True)


@pytest.mark.parametrize(
    ("items", "expected_type"),
    [
        ([text("a robot arm")], "text2world"),
        ([image(PNG_URI), text("a robot arm")], "image2world"),
        ([image(PNG_URI), video(MP4_URI), text("a robot arm")], "video2world"),
    ],
)
def test_cosmos_predict_video(emulator: Callable[..., Running], items: List[Dict[str, Any]],
                              expected_type: str) -> None:
    """cosmos-predict2.5 answers a deterministic data:video/mp4 URI; inference_type follows the media."""
    emu = emulator(COSMOS_PREDICT, model_path="base-2b")
    body = {"messages": [user(*items)], "max_tokens": 21, "seed": 3}
    status, first = chat(emu.base, body)
    assert status == 200 and first["model"] == "base-2b"
    data = _predict_video(first)
    assert data[4:12] == b"ftypisom"
    ftyp_size = int.from_bytes(data[:4], "big")
    assert data[ftyp_size + 4:ftyp_size + 8] == b"free"
    assert int.from_bytes(data[ftyp_size:ftyp_size + 4], "big") == len(data) - ftyp_size
    description = data[ftyp_size + 8:].decode()
    assert f"cosmos-predict2.5 {expected_type} prompt='a robot arm' frames=21 guidance=7" in description
    assert "num_steps=35 seed=3" in description
    status, second = chat(emu.base, body)
    assert status == 200 and _predict_video(second) == data


def test_cosmos_predict_explicit_inference_type(emulator: Callable[..., Running]) -> None:
    """An explicit valid inference_type wins; an unknown one is a 400."""
    emu = emulator(COSMOS_PREDICT, model_path="base-2b")
    status, body = chat(emu.base, {"messages": [user(video(MP4_URI), text("go"))], "inference_type": "video2world"})
    assert status == 200 and b" video2world " in _predict_video(body)
    status, body = chat(emu.base, {"messages": [user(text("go"))], "inference_type": "text2video"})
    assert status == 400 and body["error"]["type"] == "invalid_request"


@pytest.mark.parametrize(
    ("flavor", "body", "raw"),
    [
        (COSMOS_RL, {}, None),
        (TAO_DATASERVICES, None, b""),
        (TAO_DATASERVICES, {"messages": [{"role": "system", "content": "only a system prompt"}]}, None),
        (TAO_DATASERVICES, {"messages": [user(text(""))]}, None),
        (COSMOS_RL, {"messages": [user(text("no media"))]}, None),
        (COSMOS_RL, {"messages": [user(image("data:text/plain;base64,aGVsbG8="), text("x"))]}, None),
        (TAO_DATASERVICES, {"messages": [user(image("data:application/pdf;base64,aGVsbG8="), text("x"))]}, None),
        (COSMOS_RL, {"messages": [user(image("data:image/webp;base64,aGVsbG8="), text("x"))]}, None),
        (COSMOS_RL, {"messages": [user(image("https://example.com/a.webp"), text("x"))]}, None),
        (COSMOS_RL, {"messages": [user(image("data:image/png;base64,a"), text("x"))]}, None),
        (COSMOS_RL, {"messages": [user(image("s3://bucket/a.jpg"), text("x"))]}, None),
        (COSMOS_RL, {"messages": [user(video("gs://bucket/a.mp4"), text("x"))]}, None),
        (TAO_DATASERVICES, {"messages": [user(image("az://container/a.png"), text("x"))]}, None),
        (COSMOS_RL, {"messages": [user(image("/workspace/a.jpg"), text("x"))]}, None),
        (COSMOS_PREDICT, {"messages": [user(image(PNG_URI))]}, None),
    ],
    ids=[
        "empty-object", "empty-body", "no-user-message", "empty-prompt", "cosmos-rl-without-media",
        "data-uri-text-plain", "data-uri-pdf", "cosmos-rl-webp", "cosmos-rl-webp-url", "bad-base64",
        "s3", "gs", "az", "local-path", "predict-without-prompt",
    ],
)
def test_invalid_request(emulator: Callable[..., Running], flavor: str, body: Any, raw: Optional[bytes]) -> None:
    """Semantically wrong requests are 400 invalid_request."""
    emu = emulator(flavor, model_path="base-2b" if flavor == COSMOS_PREDICT else HF_MODEL)
    status, answer = chat(emu.base, body, raw=raw)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request" and answer["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (json.dumps({"messages": [user(text("hi"))]}).encode(), "text/plain"),
        (json.dumps({"messages": [user(text("hi"))]}).encode(), None),
        (b'{"messages": [', "application/json"),
        (b"\xff\xfe not utf-8", "application/json"),
        (json.dumps({"messages": "hi"}).encode(), "application/json"),
        (json.dumps({"messages": ["hi"]}).encode(), "application/json"),
        (json.dumps({"messages": [user(text("hi"))], "max_tokens": "64"}).encode(), "application/json"),
        (json.dumps({"messages": [user(text("hi"))], "max_tokens": True}).encode(), "application/json"),
        (json.dumps({"messages": [user(text("hi"))], "temperature": "hot"}).encode(), "application/json"),
        (json.dumps({"messages": [{"role": "user", "content": ["hi"]}]}).encode(), "application/json"),
        (json.dumps({"messages": [user({"type": "image_url", "image_url": "x.jpg"})]}).encode(), "application/json"),
        (json.dumps([1, 2]).encode(), "application/json"),
    ],
    ids=[
        "text-plain", "no-content-type", "malformed-json", "not-utf8", "messages-not-list",
        "message-not-object", "max-tokens-string", "max-tokens-bool", "temperature-string",
        "content-item-not-object", "image-url-not-object", "body-is-a-list",
    ],
)
def test_internal_error(emulator: Callable[..., Running], raw: bytes, content_type: Optional[str]) -> None:
    """Non-JSON content type, malformed JSON and wrongly typed fields are 500 internal_error."""
    emu = emulator(TAO_DATASERVICES)
    status, answer = chat(emu.base, None, raw=raw, content_type=content_type)
    assert status == 500, answer
    assert answer["error"]["type"] == "internal_error" and answer["error"]["message"]


def test_predict_typed_fields(emulator: Callable[..., Running]) -> None:
    """cosmos-predict2.5 extras are type-checked too."""
    emu = emulator(COSMOS_PREDICT, model_path="base-2b")
    status, body = chat(emu.base, {"messages": [user(text("go"))], "num_steps": "35"})
    assert status == 500 and body["error"]["type"] == "internal_error"


# -- other routes ------------------------------------------------------------------


def test_status_reports_job_and_hides_secrets(emulator: Callable[..., Running]) -> None:
    """/api/v1/status shows the job and the non-secret env, never a secret value."""
    environ = {"HF_TOKEN": SECRET, "WANDB_API_KEY": "wandb-" + SECRET, "TAO_EXECUTION_BACKEND": "local-docker"}
    env_payload = dict(ENV_PAYLOAD, HF_TOKEN=SECRET, TAO_USER_KEY="user-" + SECRET)
    emu = emulator(COSMOS_RL, environ=environ, docker_env_vars=env_payload)
    status, body = request("GET", emu.base + "/api/v1/status")
    assert status == 200
    assert body["job_id"] == JOB_ID and body["network_arch"] == COSMOS_RL
    assert body["model_path"] == HF_MODEL and body["state"] == "ready"
    for key, value in ENV_PAYLOAD.items():
        assert body["docker_env_vars"][key] == value
    assert body["container_env"] == {"TAO_EXECUTION_BACKEND": "local-docker"}
    assert body["hf_token_set"] is True
    assert SECRET not in json.dumps(body)
    assert SECRET not in emu.log.getvalue()


def test_hf_token_unset(emulator: Callable[..., Running]) -> None:
    """hf_token_set is false without HF_TOKEN."""
    emu = emulator(TAO_DATASERVICES)
    assert request("GET", emu.base + "/api/v1/status")[1]["hf_token_set"] is False


def test_stats_count_concurrent_chats(emulator: Callable[..., Running]) -> None:
    """/emulator/stats counts chat requests and the peak of concurrent ones."""
    emu = emulator(TAO_DATASERVICES, response_ms=400)
    assert request("GET", emu.base + "/emulator/stats") == (200, {"requests": 0, "in_flight": 0, "max_in_flight": 0})
    results: "queue.Queue[int]" = queue.Queue()
    threads = [
        threading.Thread(target=lambda: results.put(chat(emu.base, {"messages": [user(text("hi"))]})[0]))
        for _thread in range(3)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until(lambda: request("GET", emu.base + "/emulator/stats")[1]["in_flight"] == 3, timeout=5)
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert sorted(results.get_nowait() for _result in range(3)) == [200, 200, 200]
    assert time.monotonic() - started >= 0.4
    assert request("GET", emu.base + "/emulator/stats") == (200, {"requests": 3, "in_flight": 0, "max_in_flight": 3})


def test_unknown_route_and_wrong_method(emulator: Callable[..., Running]) -> None:
    """Unknown routes are JSON 404; a known route with another method is JSON 405."""
    emu = emulator()
    status, body = request("GET", emu.base + "/v2/nothing")
    assert status == 404 and body["error"]["type"] == "not_found"
    status, body = request("GET", emu.base + "/v1/chat/completions")
    assert status == 405 and body["error"]["type"] == "method_not_allowed"


def test_keep_alive_connection_serves_several_requests(emulator: Callable[..., Running]) -> None:
    """HTTP/1.1 keep-alive: bodies are read fully, so a second request on the same socket works."""
    emu = emulator(TAO_DATASERVICES)
    port = int(emu.base.rsplit(":", 1)[1])
    payload = json.dumps({"messages": [user(text("hi"))]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(head + payload + b"GET /api/v1/health/readiness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2, received


# -- command lines -------------------------------------------------------------------


def _job(**overrides: Any) -> Dict[str, Any]:
    job: Dict[str, Any] = {"job_id": JOB_ID, "specs": {"model_path": HF_MODEL}, "neural_network_name": "cosmos-rl"}
    job.update(overrides)
    return job


def _blob(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (cli.cosmos_rl_main, ["--job", '{"job_id":"a","specs":{"model_path":"x","flag":true}}'], "literal"),
        (cli.cosmos_rl_main, ["--job", "{not a literal"], "--job"),
        (cli.cosmos_rl_main, ["--job", _blob(_job(specs={}))], "specs.model_path"),
        (cli.cosmos_rl_main, ["--job", _blob({"specs": {"model_path": "x"}})], "job_id"),
        (cli.cosmos_rl_main, ["--job", _blob(_job()), "--docker_env_vars", "['a']"], "dict"),
        (cli.cosmos_rl_main, ["--docker_env_vars", _blob(ENV_PAYLOAD)], "--job"),
        (cli.tao_dataservices_main, ["--job", "{broken"], "Failed to parse job argument"),
        (cli.tao_dataservices_main, ["--job", _blob(_job(specs={"model_path": ""}))], "specs.model_path"),
        (cli.cosmos_predict_main, ["inference_microservice", "start", "--model", "base-2b", "--output-dir", "/tmp/o",
                                   "--job", _blob(_job())], "unrecognized arguments: --job"),
        (cli.cosmos_predict_main, ["inference_microservice", "start", "--output-dir", "/tmp/o"],
         "one of the arguments --checkpoint-path --model is required"),
        (cli.cosmos_predict_main, ["inference_microservice", "start", "--model", "base-2b", "--checkpoint-path", "/c",
                                   "--output-dir", "/tmp/o"], "not allowed with argument"),
        (cli.cosmos_predict_main, ["inference_microservice", "start", "--model", "base-2b"], "--output-dir"),
    ],
    ids=[
        "json-true-rejected-by-literal-eval", "malformed-job", "no-model-path", "no-job-id", "env-not-dict",
        "no-job", "hf-malformed-job", "hf-empty-model-path", "predict-rejects-job", "predict-needs-a-source",
        "predict-one-source-only", "predict-needs-output-dir",
    ],
)
def test_command_line_errors_exit_2(main: Callable[[List[str]], int], argv: List[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors print a clear message to stderr and exit 2."""
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_env_setting_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-numeric TAO_EMULATOR_* value is a usage error."""
    monkeypatch.setenv("TAO_EMULATOR_LOAD_SECONDS", "soon")
    with pytest.raises(SystemExit) as exc_info:
        cli.cosmos_rl_main(["--job", _blob(_job())])
    assert exc_info.value.code == 2
    assert "TAO_EMULATOR_LOAD_SECONDS" in capsys.readouterr().err


class Process:
    """An emulator subprocess whose stderr lines are collected by a thread."""

    def __init__(self, argv: List[str], env: Dict[str, str]) -> None:
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_line(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first stderr line matching ``pattern`` (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no stderr line matching {pattern!r} in {timeout}s; got {self.seen}")

    def output(self) -> str:
        """Every stderr line seen so far."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return "".join(self.seen)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` and return the exit status (kills it if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise


@pytest.fixture(name="spawn")
def spawn_fixture() -> Iterator[Callable[..., Process]]:
    """Factory: start emulator subprocesses on 127.0.0.1; all are stopped at teardown."""
    started: List[Process] = []

    def start(argv: List[str], **extra_env: str) -> Process:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(EMULATOR_DIR),
            "TAO_EMULATOR_HOST": "127.0.0.1",
            "TAO_EMULATOR_LOAD_SECONDS": "0.2",
            **extra_env,
        }
        process = Process(argv, env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(timeout=5)
        if process.proc.stderr is not None:
            process.proc.stderr.close()


def _listening_base(process: Process) -> str:
    match = process.wait_line(r"listening on http://127\.0\.0\.1:(\d+)")
    return f"http://127.0.0.1:{match.group(1)}"


@pytest.mark.parametrize(
    ("argv", "flavor"),
    [
        ([str(EMULATOR_DIR / "bin" / "cosmos-rl-inference-microservice"), "--port", "0",
          "--job", _blob(_job()), "--docker_env_vars", _blob(dict(ENV_PAYLOAD, HF_TOKEN=SECRET)),
          "--idle_timeout_minutes", "5", "--disable_auto_deletion"], COSMOS_RL),
        ([str(EMULATOR_DIR / "bin" / "cosmos_predict"), "inference_microservice", "start", "--model", "base-2b",
          "--output-dir", "{tmp}/out", "--port", "0", "--idle-timeout-minutes", "2.5",
          "--context-parallel-size", "2", "--disable-guardrails", "--offload-guardrail-models",
          "--offload-diffusion-model"], COSMOS_PREDICT),
        (["-m", "nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server",
          "--port", "0", "--job", _blob(_job(neural_network_name="tao-dataservices", extra=True)),
          "--docker_env_vars", _blob(ENV_PAYLOAD)], TAO_DATASERVICES),
    ],
    ids=["cosmos-rl", "cosmos-predict2.5", "tao-dataservices"],
)
def test_command_line_serves_and_stops_on_sigterm(spawn: Callable[..., Process], tmp_path: Path,
                                                  argv: List[str], flavor: str) -> None:
    """Each container command line serves the flavor, keeps secrets out of the log and exits on SIGTERM."""
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    process = spawn([sys.executable, *argv], HF_TOKEN=SECRET)
    base = _listening_base(process)
    wait_ready(base)
    items = [text("hello")] if flavor != COSMOS_RL else [image(PNG_URI), text("hello")]
    status, body = chat(base, {"messages": [user(*items)]})
    assert status == 200
    content = body["choices"][0]["message"]["content"]
    if flavor == COSMOS_PREDICT:
        assert content.startswith("data:video/mp4;base64,")
        assert (tmp_path / "out").is_dir()
    else:
        assert content.startswith(f"[tao-inference reference microservice] {flavor} answered 'hello'")
    status, info = request("GET", base + "/api/v1/status")
    assert status == 200 and info["network_arch"] == flavor and info["hf_token_set"] is True
    if flavor == COSMOS_PREDICT:
        assert info["options"]["context_parallel_size"] == 2 and info["options"]["disable_guardrails"] is True
    else:
        assert info["job_id"] == JOB_ID and info["docker_env_vars"]["CLOUD_BASED"] == "False"

    started = time.monotonic()
    assert process.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3
    log = process.output()
    assert "received SIGTERM" in log and '"POST /v1/chat/completions" 200' in log
    assert SECRET not in log


def test_python_literal_job_blob_for_tao_dataservices(spawn: Callable[..., Process]) -> None:
    """tao-dataservices falls back to ast.literal_eval for Python-literal blobs."""
    literal = repr({"job_id": JOB_ID, "specs": {"model_path": HF_MODEL}, "neural_network_name": "tao-dataservices"})
    process = spawn([sys.executable, "-m", "tao_emulator", TAO_DATASERVICES, "--port", "0", "--job", literal])
    base = _listening_base(process)
    wait_ready(base)
    assert request("GET", base + "/api/v1/status")[1]["model_path"] == HF_MODEL
    assert process.stop(signal.SIGINT) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _connection_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_startup_delay_refuses_connections_then_listens(spawn: Callable[..., Process]) -> None:
    """TAO_EMULATOR_STARTUP_SECONDS: connection refused first, then loading, then ready."""
    port = _free_port()
    process = spawn([sys.executable, str(EMULATOR_DIR / "bin" / "cosmos-rl-inference-microservice"),
                     "--port", str(port), "--job", _blob(_job())],
                    TAO_EMULATOR_STARTUP_SECONDS="0.8", TAO_EMULATOR_LOAD_SECONDS="0.5")
    process.wait_line("startup delay")
    assert _connection_refused(port)
    process.wait_line(r"listening on")
    status, body = request("GET", f"http://127.0.0.1:{port}/api/v1/health/readiness")
    assert (status, body["reason"]) == (503, "model_loading")
    wait_ready(f"http://127.0.0.1:{port}")


def test_sigterm_during_startup_delay_exits_promptly(spawn: Callable[..., Process]) -> None:
    """SIGTERM while waiting to listen still exits at once."""
    process = spawn([sys.executable, str(EMULATOR_DIR / "bin" / "cosmos-rl-inference-microservice"),
                     "--port", "0", "--job", _blob(_job())], TAO_EMULATOR_STARTUP_SECONDS="30")
    process.wait_line("startup delay")
    started = time.monotonic()
    assert process.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3


def test_failed_load_is_logged_by_the_process(spawn: Callable[..., Process]) -> None:
    """The process keeps running after a failed load and logs the real cause."""
    process = spawn([sys.executable, str(EMULATOR_DIR / "bin" / "cosmos-rl-inference-microservice"),
                     "--port", "0", "--job", _blob(_job(specs={"model_path": "/missing/model"}))])
    base = _listening_base(process)
    process.wait_line(r"^ERROR: model load failed: model path not found: /missing/model$")
    status, body = request("GET", base + "/api/v1/health/readiness")
    assert (status, body["reason"]) == (503, "model_load_failed")
    assert process.proc.poll() is None
    assert process.stop() == 0
