"""External endpoints: one HTTP listener on 127.0.0.1 per deployment, in front of its ready replicas.

It does what Lepton's ingress does for an endpoint: requests need one of the endpoint's API tokens as
``Authorization: Bearer`` (401 otherwise), unless the endpoint allows unauthenticated access; an IP
allowlist is enforced (403); the header is removed before the request reaches the container when the
deployment asks for it; with no ready replica the answer is 503 ``no healthy upstream``. Requests go to
the ready replicas in turn, on their bridge addresses. Each forwarded request is journaled (method, path,
status, whether an Authorization header reached the container): never a header value or a body."""

import hmac
import http.client
import ipaddress
import itertools
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from .workspace import Deployment, Workspace, iso

LOG = logging.getLogger("lepton_standin")
HOP = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                 "host", "content-length"))
MAX_BODY = 1024 * 1024 * 1024


class Ingress(ThreadingHTTPServer):
    """The endpoint of one deployment."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, workspace: Workspace, deployment: Deployment) -> None:
        super().__init__((workspace.config.address, 0), IngressHandler)
        self.workspace = workspace
        self.deployment = deployment
        self.turn = itertools.count()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="ingress-" + deployment.name, daemon=True)

    @property
    def url(self) -> str:
        return "http://%s:%d" % self.server_address[:2]

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def upstream(self) -> Optional[str]:
        with self.workspace.lock:
            ready = [r.ip for r in self.deployment.replicas.values() if r.ready and r.ip]
        return ready[next(self.turn) % len(ready)] if ready else None


class IngressHandler(BaseHTTPRequestHandler):
    """Checks the token and the allowlist, then forwards the request to a ready replica."""

    protocol_version = "HTTP/1.1"
    server_version = "lepton-ingress"
    server: Ingress

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        return

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = bytearray()
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline(16)
                if len(data) > MAX_BODY:
                    raise ValueError("request body too large")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _allowed(self) -> Optional[int]:
        """None when the request may pass; else the status to refuse it with."""
        spec = self.server.deployment.spec
        allowlist = (spec.get("auth_config") or {}).get("ip_allowlist") or []
        if allowlist:
            client = ipaddress.ip_address(self.client_address[0])
            if not any(client in ipaddress.ip_network(item, strict=False) for item in allowlist):
                return 403
        tokens = self.server.deployment.tokens(self.server.workspace.config.token)
        if not tokens:
            return None
        given = self.headers.get("Authorization") or ""
        scheme, _space, token = given.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens):
            return 401
        return None

    def _journal(self, status: int, forwarded_auth: bool) -> None:
        self.server.workspace.journal.append({"time": iso(), "kind": "ingress", "deployment": self.server.deployment.name,
                                              "method": self.command, "path": self.path.split("?", 1)[0],
                                              "status": status, "authorization_forwarded": forwarded_auth})

    def _handle(self) -> None:
        try:
            body = self._body()
        except (ValueError, OSError):
            self.close_connection = True
            self._answer(400, b'{"code":"BadRequest","message":"unreadable request body"}')
            return
        refused = self._allowed()
        if refused:
            message = "missing or invalid API token" if refused == 401 else "client address not in the IP allowlist"
            self._journal(refused, False)
            self._answer(refused, json.dumps({"code": "Unauthorized" if refused == 401 else "Forbidden",
                                              "message": message}).encode())
            return
        target = self.server.upstream()
        if target is None:
            self._journal(503, False)
            self._answer(503, b"no healthy upstream", "text/plain")
            return
        headers = dict((k, v) for k, v in self.headers.items() if k.lower() not in HOP)
        auth = ((self.server.deployment.spec.get("auth_config") or {}).get("lepton_workspace_token_auth") or {})
        if auth.get("remove_authorization_header"):
            headers = dict((k, v) for k, v in headers.items() if k.lower() != "authorization")
        forwarded_auth = any(k.lower() == "authorization" for k in headers)
        try:
            conn = http.client.HTTPConnection(target, 8080, timeout=600)
            try:
                conn.request(self.command, self.path, body=body if body or self.command in ("POST", "PUT", "PATCH")
                             else None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                out = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP]
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            self._journal(502, forwarded_auth)
            self._answer(502, b"upstream connect error or disconnect/reset before headers", "text/plain")
            return
        self._journal(response.status, forwarded_auth)
        self.send_response(response.status)
        for key, value in out:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802  pylint: disable=invalid-name
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET
