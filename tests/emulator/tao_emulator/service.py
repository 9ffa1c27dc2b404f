"""State of one emulated inference microservice and the bodies of its routes.

:class:`EmulatorService` knows nothing about HTTP: every route is a method that
returns ``(status, body)``.  The model "load" is a timer: after
``Settings.load_seconds`` the service becomes ready, or fails when
``Settings.load_fail`` is set or the local model path does not exist.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional, TextIO, Tuple

from . import COSMOS_PREDICT, COSMOS_RL, TAO_DATASERVICES
from .chat import InternalError, InvalidRequest, answer, parse_body, parse_request

Response = Tuple[int, Dict[str, Any]]

# Variables whose values must never be printed nor returned.
SECRET_NAMES = frozenset({
    "HF_TOKEN",
    "WANDB_API_KEY",
    "CLEARML_API_ACCESS_KEY",
    "CLEARML_API_SECRET_KEY",
    "TAO_API_KEY",
    "TAO_USER_KEY",
    "TAO_ADMIN_KEY",
})
_SECRET_PATTERN = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.IGNORECASE)
REDACTED = "<redacted>"
# Container variables the collection sets that are safe to report.
PUBLIC_CONTAINER_ENV = ("TAO_EXECUTION_BACKEND", "TAO_API_JOB_ID", "CLOUD_BASED")

# The class name the real server reports as "model_type", per flavor.
MODEL_TYPES = {
    COSMOS_RL: "CosmosInferenceMicroservice",
    COSMOS_PREDICT: "CosmosPredictInferenceMicroservice",
    TAO_DATASERVICES: "HuggingFaceInferenceMicroserviceServer",
}

GENERIC_LOAD_ERROR = "Model loading failed"

# Lifecycle states (the value is the real server's ``progress.stage``).
INITIALIZING = "initializing"
LOADING = "loading_model"
READY = "ready"
FAILED = "error"
_STATE_NAMES = {INITIALIZING: "initializing", LOADING: "loading", READY: "ready", FAILED: "load_failed"}


def is_secret(name: str) -> bool:
    """True for a variable whose value must stay hidden."""
    return name.upper() in SECRET_NAMES or bool(_SECRET_PATTERN.search(name))


def redact(env: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of ``env`` with every secret value replaced by a marker."""
    return {str(key): (REDACTED if is_secret(str(key)) else value) for key, value in env.items()}


def _now() -> str:
    return datetime.now().isoformat()


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds/milliseconds, got {raw!r}") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Behaviour knobs, read from ``TAO_EMULATOR_*`` environment variables."""

    startup_seconds: float = 0.0
    load_seconds: float = 1.0
    load_fail: Optional[str] = None
    response_ms: float = 0.0
    host: str = "0.0.0.0"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Settings":
        """Read the settings; raise ``ValueError`` with a clear message on a bad value."""
        return cls(
            startup_seconds=_number(environ, "TAO_EMULATOR_STARTUP_SECONDS", 0.0),
            load_seconds=_number(environ, "TAO_EMULATOR_LOAD_SECONDS", 1.0),
            load_fail=environ.get("TAO_EMULATOR_LOAD_FAIL") or None,
            response_ms=_number(environ, "TAO_EMULATOR_RESPONSE_MS", 0.0),
            host=environ.get("TAO_EMULATOR_HOST", "").strip() or "0.0.0.0",
        )


@dataclass
class JobConfig:  # pylint: disable=too-many-instance-attributes
    """What the container command line said."""

    flavor: str
    entrypoint: str
    model_path: str
    job_id: Optional[str] = None
    network_arch: Optional[str] = None
    served_model: Optional[str] = None
    port: int = 8080
    docker_env_vars: Dict[str, Any] = field(default_factory=dict)
    idle_timeout_minutes: Optional[float] = 30
    auto_deletion_enabled: bool = True
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.network_arch = self.network_arch or self.flavor
        self.served_model = self.served_model or self.model_path


class EventLog:
    """Timestamped lines on a stream (stderr: the container log), one writer at a time."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def raw(self, line: str) -> None:
        """Write ``line`` as it is."""
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def info(self, message: str) -> None:
        """Write ``message`` with a UTC timestamp."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        self.raw(f"{stamp} tao-emulator {message}")


class EmulatorService:  # pylint: disable=too-many-instance-attributes
    """One emulated microservice: lifecycle, statistics and route bodies."""

    def __init__(
        self,
        job: JobConfig,
        settings: Settings,
        environ: Optional[Mapping[str, str]] = None,
        log: Optional[EventLog] = None,
    ) -> None:
        self.job = job
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.log = log or EventLog()
        self.model_type = MODEL_TYPES[job.flavor]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._state = INITIALIZING
        self._progress = self._make_progress(INITIALIZING, "Server initialization starting")
        self._requests = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._last_request = datetime.now()

    # -- lifecycle -------------------------------------------------------

    @property
    def state(self) -> str:
        """The lifecycle state (the real server's ``progress.stage``)."""
        with self._lock:
            return self._state

    def _set_state(self, state: str, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        with self._lock:
            self._state = state
            self._progress = self._make_progress(state, message, details)

    @staticmethod
    def _make_progress(stage: str, message: str, details: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        remaining = {
            INITIALIZING: ["Load model into memory", "Ready for inference"],
            LOADING: ["Complete model loading", "Ready for inference"],
        }.get(stage, [])
        return {
            "stage": stage,
            "message": message,
            "remaining_steps": remaining,
            "details": details or {},
            "timestamp": _now(),
        }

    def start_loading(self) -> None:
        """Enter the loading state and finish the load in the background."""
        self._set_state(LOADING, "Loading model into memory", {"phase": "loading", "model_type": self.model_type})
        self.log.info(
            f"loading model {self.job.served_model} for job {self.job.job_id} "
            f"({self.job.network_arch}); ready in {self.settings.load_seconds:g}s"
        )
        threading.Thread(target=self._finish_loading, name="model-loader", daemon=True).start()

    def _finish_loading(self) -> None:
        started = time.monotonic()
        if self._stopped.wait(self.settings.load_seconds):
            return
        problem = self.load_problem()
        if problem:
            self._set_state(FAILED, GENERIC_LOAD_ERROR, {"error": GENERIC_LOAD_ERROR, "phase": "model_loading"})
            self.log.raw(f"ERROR: model load failed: {problem}")
            return
        load_time = time.monotonic() - started
        self._set_state(
            READY,
            "Model loaded successfully, ready for inference",
            {"load_time": load_time, "model_type": self.model_type},
        )
        self.log.info(f"model loaded successfully in {load_time:.2f}s - ready for inference")

    def load_problem(self) -> Optional[str]:
        """Why the model load fails, or ``None`` when it succeeds."""
        if self.settings.load_fail:
            return self.settings.load_fail
        path = self.job.model_path
        if path.startswith("/") and not os.path.exists(path):
            return f"model path not found: {path}"
        return None

    def stop(self) -> None:
        """Stop the background load and any pending response delay."""
        self._stopped.set()

    # -- GET routes ------------------------------------------------------

    def readiness(self) -> Response:
        """``GET /api/v1/health/readiness``: 200 when ready, else 503 with a reason."""
        state = self.state
        if state == READY:
            return 200, {
                "status": "ready",
                "message": "Server is ready to accept inference requests",
                "job_id": self.job.job_id,
                "model_type": self.model_type,
                "timestamp": _now(),
            }
        reason, message = {
            INITIALIZING: ("server_initializing", "Server is still initializing"),
            LOADING: ("model_loading", "Model is currently loading"),
            FAILED: ("model_load_failed", f"Model failed to load: {GENERIC_LOAD_ERROR}"),
        }[state]
        return 503, {
            "status": "not_ready",
            "reason": reason,
            "message": message,
            "job_id": self.job.job_id,
            "timestamp": _now(),
        }

    def _common_health(self) -> Dict[str, Any]:
        state = self.state
        with self._lock:
            progress = dict(self._progress)
            last_request = self._last_request
        idle = (datetime.now() - last_request).total_seconds() / 60 if state == READY else 0.0
        return {
            "model_loaded": state == READY,
            "model_loading": state == LOADING,
            "server_initializing": state == INITIALIZING,
            "job_id": self.job.job_id,
            "model_type": self.model_type,
            "last_request_time": last_request.isoformat(),
            "idle_time_minutes": round(idle, 2),
            "idle_timeout_minutes": self.job.idle_timeout_minutes,
            "auto_deletion_enabled": self.job.auto_deletion_enabled,
            "progress": progress,
        }

    def liveness(self) -> Response:
        """``GET /api/v1/health/liveness``: always 200, with ``progress.stage``."""
        return 200, {"status": "healthy", **self._common_health()}

    def status(self) -> Response:
        """``GET /api/v1/status``: what the service runs, without any secret value."""
        state = self.state
        hf_token_set = bool(self.environ.get("HF_TOKEN") or self.job.docker_env_vars.get("HF_TOKEN"))
        body = {
            **self._common_health(),
            "emulator": True,
            "entrypoint": self.job.entrypoint,
            "network_arch": self.job.network_arch,
            "model_path": self.job.model_path,
            "model": self.job.served_model,
            "state": _STATE_NAMES[state],
            "initialization_error": None,
            "model_load_error": GENERIC_LOAD_ERROR if state == FAILED else None,
            "server_port": self.job.port,
            "docker_env_vars": redact(self.job.docker_env_vars),
            "container_env": {k: self.environ[k] for k in PUBLIC_CONTAINER_ENV if k in self.environ},
            "hf_token_set": hf_token_set,
            "options": dict(self.job.options),
        }
        return 200, body

    def stats(self) -> Response:
        """``GET /emulator/stats``: counters of chat completion requests."""
        with self._lock:
            return 200, {
                "requests": self._requests,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
            }

    # -- POST /v1/chat/completions ---------------------------------------

    def chat(self, content_type: Optional[str], body: bytes) -> Response:
        """``POST /v1/chat/completions`` with in-flight accounting."""
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._last_request = datetime.now()
        try:
            return self._chat(content_type, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _chat(self, content_type: Optional[str], body: bytes) -> Response:
        state = self.state
        if state == INITIALIZING:
            return 202, _error("server_initializing", "Server is initializing, please wait")
        if state == LOADING:
            return 202, _error("model_loading", "Model is currently loading, please wait")
        if state == FAILED:
            return 503, _error("model_load_error", f"Model failed to load: {GENERIC_LOAD_ERROR}")
        try:
            request = parse_request(parse_body(content_type, body), self.job.flavor)
            content = answer(self.job.flavor, request)
        except InvalidRequest as exc:
            self.log.info(f"chat completions invalid request: {exc}")
            return 400, _error("invalid_request", str(exc))
        except InternalError as exc:
            self.log.info(f"chat completions request failed: {exc}")
            return 500, _error("internal_error", str(exc))
        if self.settings.response_ms > 0:
            self._stopped.wait(self.settings.response_ms / 1000.0)
        return 200, {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.job.served_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }


def _error(kind: str, message: str) -> Dict[str, Any]:
    return {"error": {"message": message, "type": kind}}
