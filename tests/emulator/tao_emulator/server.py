"""HTTP front end of the reference microservice.

:func:`make_server` builds a :class:`http.server.ThreadingHTTPServer` around an
:class:`~tao_emulator.service.EmulatorService`; :func:`serve` is the process
main loop used by the command lines (startup delay, bind, load, serve, and a
prompt exit on SIGTERM / SIGINT).
"""

from __future__ import annotations

import json
import signal
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from . import __version__
from .service import EmulatorService, EventLog, JobConfig, Response, Settings, redact

CHAT_PATH = "/v1/chat/completions"


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the service its handlers call."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], service: EmulatorService) -> None:
        self.service = service
        super().__init__(address, EmulatorRequestHandler)


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    """Routes requests to the service and logs one line per request."""

    protocol_version = "HTTP/1.1"
    server_version = f"tao-inference-emulator/{__version__}"
    server: EmulatorHTTPServer
    _body: bytes = b""

    def _routes(self) -> Dict[str, Dict[str, Callable[[], Response]]]:
        service = self.server.service
        return {
            "/api/v1/health/readiness": {"GET": service.readiness},
            "/api/v1/health/liveness": {"GET": service.liveness},
            "/api/v1/status": {"GET": service.status},
            "/emulator/stats": {"GET": service.stats},
            CHAT_PATH: {"POST": self._chat},
        }

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        """Serve a GET request."""
        self._handle()

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """Serve a POST request."""
        self._handle()

    def do_PUT(self) -> None:  # pylint: disable=invalid-name
        """Answer 404/405 to a PUT request."""
        self._handle()

    def do_DELETE(self) -> None:  # pylint: disable=invalid-name
        """Answer 404/405 to a DELETE request."""
        self._handle()

    def do_PATCH(self) -> None:  # pylint: disable=invalid-name
        """Answer 404/405 to a PATCH request."""
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        try:
            self._body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._send(400, {"error": {"message": str(exc), "type": "invalid_request"}}, started)
            return
        methods = self._routes().get(path)
        if methods is None:
            status, body = 404, {"error": {"message": f"No route for {self.command} {path}", "type": "not_found"}}
        elif self.command not in methods:
            status, body = 405, {
                "error": {
                    "message": f"Method {self.command} not allowed on {path}; use {', '.join(methods)}",
                    "type": "method_not_allowed",
                }
            }
        else:
            try:
                status, body = methods[self.command]()
            except Exception as exc:  # pylint: disable=broad-except
                self.server.service.log.info(f"unexpected error on {self.command} {path}: {exc!r}")
                status, body = 500, {"error": {"message": str(exc), "type": "internal_error"}}
        self._send(status, body, started)

    def _chat(self) -> Response:
        return self.server.service.chat(self.headers.get("Content-Type"), self._body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise ValueError(f"Invalid Content-Length: {raw!r}") from None
        if length < 0:
            raise ValueError(f"Invalid Content-Length: {raw!r}")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: List[bytes] = []
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ValueError("Invalid chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailer headers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)  # CRLF after the chunk

    def _send(self, status: int, body: Dict[str, Any], started: float) -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        elapsed_ms = (time.monotonic() - started) * 1000
        self.server.service.log.info(
            f'{self.client_address[0]} "{self.command} {self.path}" {status} {elapsed_ms:.1f}ms'
        )

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        """Requests are logged by :meth:`_send`, once the answer is out."""

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        """Route the base class' messages (malformed requests...) to the event log."""
        self.server.service.log.info(f"{self.address_string()} {format % args}")


def make_server(service: EmulatorService, host: str, port: int) -> EmulatorHTTPServer:
    """Bind a server for ``service`` (port 0 picks a free port)."""
    return EmulatorHTTPServer((host, port), service)


POLL_SECONDS = 0.1


class _StopRequest:
    """Set by the SIGTERM / SIGINT handler, checked by the main loop.

    The handler only records the signal: raising from it could land inside
    socketserver's request handling (which catches exceptions) and be lost.
    """

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (also when running as PID 1)."""
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, _frame: Optional[FrameType]) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signal_name is not None

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early on a stop signal."""
        deadline = time.monotonic() + seconds
        while not self.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(POLL_SECONDS, remaining))


def serve(job: JobConfig, settings: Settings, log: Optional[EventLog] = None) -> int:
    """Run the microservice until SIGTERM / SIGINT; return the process exit status."""
    log = log or EventLog()
    service = EmulatorService(job, settings, log=log)
    server: Optional[EmulatorHTTPServer] = None
    stop = _StopRequest()
    stop.install()
    try:
        log.info(
            f"tao-inference reference microservice {__version__} ({job.entrypoint}, {job.flavor}) "
            f"starting: job_id={job.job_id} model={job.served_model}"
        )
        if job.docker_env_vars:
            log.info(f"docker env vars: {json.dumps(redact(job.docker_env_vars), sort_keys=True)}")
        if settings.startup_seconds > 0:
            log.info(f"startup delay {settings.startup_seconds:g}s before listening")
            stop.sleep(settings.startup_seconds)
        if not stop.requested:
            try:
                server = make_server(service, settings.host, job.port)
            except OSError as exc:
                log.info(f"cannot listen on {settings.host}:{job.port}: {exc}")
                return 1
            server.timeout = POLL_SECONDS
            log.info(f"listening on http://{settings.host}:{server.server_port}")
            service.start_loading()
            while not stop.requested:
                server.handle_request()
        log.info(f"received {stop.signal_name}, shutting down")
        return 0
    finally:
        service.stop()
        if server is not None:
            server.server_close()
