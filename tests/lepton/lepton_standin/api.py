"""The HTTP front end: the workspace routes under ``/api/v2/workspaces/<id>``, bearer-token
authentication (401; a read-only token gets 403 on writes), an unknown workspace (404), and errors as
``{"code": ..., "message": ...}``. Every JSON answer is checked against the leptonai model the client
loads it with before it is sent. One log line per request: method, path, status (never a body).

``GET /_standin/journal`` (admin token) lists the requests received, with their bodies as the API saw
them but every secret value replaced by its length and a digest, and the requests the ingresses
forwarded: what the tests check for stray secrets."""

import hashlib
import hmac
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from . import VERSION
from .docker import Docker
from .ingress import Ingress
from .replicas import Runtime, readiness_view, termination_view
from .spec import ApiError, check_deployment, check_pull_secret, check_secrets, conforms, parse
from .workspace import Workspace, iso

LOG = logging.getLogger("lepton_standin")
PREFIX = re.compile(r"/api/v2/workspaces/([^/]+)(/.*)?")
LOG_IDLE = 1.0  # seconds a log stream waits for more output before it ends


def redacted(value: str) -> str:
    return "<redacted: %d characters, sha256 %s>" % (len(value), hashlib.sha256(value.encode()).hexdigest()[:12])


def scrub(path: str, data: Any) -> Any:
    """A request body as the journal keeps it: secret values, passwords and literal API tokens replaced."""
    if path.endswith("/usersecrets") and isinstance(data, list):
        return [dict(item, value=redacted(str(item.get("value"))) if isinstance(item, dict) and "value" in item
                     else item) if isinstance(item, dict) else item for item in data]
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key == "password" and isinstance(value, str):
                out[key] = redacted(value)
            elif key == "api_tokens" and isinstance(value, list):
                out[key] = [dict(t, value=redacted(t["value"])) if isinstance(t, dict) and isinstance(t.get("value"), str)
                            else t for t in value]
            else:
                out[key] = scrub("", value)
        return out
    if isinstance(data, list):
        return [scrub("", item) for item in data]
    return data


class ApiServer(ThreadingHTTPServer):
    """The API, the workspace behind it, the replica runtime and the ingresses."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, workspace: Workspace, docker: Docker) -> None:
        super().__init__((workspace.config.address, workspace.config.port), Handler)
        self.workspace = workspace
        self.docker = docker
        self.runtime = Runtime(workspace, docker)
        self.ingresses: Dict[str, Ingress] = {}
        self.ingress_lock = threading.Lock()

    def close_all(self) -> None:
        self.runtime.shutdown()
        with self.ingress_lock:
            for ingress in self.ingresses.values():
                ingress.close()
            self.ingresses.clear()


class Handler(BaseHTTPRequestHandler):
    """Routes one request."""

    protocol_version = "HTTP/1.1"
    server_version = "lepton-standin/" + VERSION
    server: ApiServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        return

    # -- plumbing ------------------------------------------------------------------------------
    def _send(self, status: int, body: Any, kind: Optional[str] = None) -> int:
        if kind is not None:
            problem = conforms(kind, body)
            if problem:
                LOG.error("answer of kind %s does not load in leptonai: %s", kind, problem)
                status, body = 500, {"code": "InternalError", "message": "stand-in answer does not match leptonai: "
                                     + problem[:500]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return status

    def _read(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _token(self) -> Optional[str]:
        """``admin``, ``viewer``, or None for a missing or wrong token."""
        scheme, _space, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        config = self.server.workspace.config
        if hmac.compare_digest(token.encode(), config.token.encode()):
            return "admin"
        if hmac.compare_digest(token.encode(), config.viewer_token.encode()):
            return "viewer"
        return None

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        raw = self._read() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
        status = 500
        try:
            status = self._route(method, path, query, raw)
        except ApiError as exc:
            status = self._send(exc.status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            status = 499
        except Exception as exc:  # pylint: disable=broad-except  # a bug answers 500 and is logged
            LOG.exception("%s %s failed", method, path)
            status = self._send(500, {"code": "InternalError", "message": type(exc).__name__})
        finally:
            LOG.info("%s %s %d", method, path, status)
            if not path.startswith("/_standin/"):
                try:
                    body = scrub(path, json.loads(raw)) if raw else None
                except ValueError:
                    body = "<%d bytes, not JSON>" % len(raw)
                self.server.workspace.journal.append({"time": iso(), "kind": "api", "method": method, "path": path,
                                                      "status": status, "body": body})

    def do_GET(self) -> None:  # noqa: N802  pylint: disable=invalid-name
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802  pylint: disable=invalid-name
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802  pylint: disable=invalid-name
        self._handle("DELETE")

    def do_PUT(self) -> None:  # noqa: N802  pylint: disable=invalid-name
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802  pylint: disable=invalid-name
        self._handle("PATCH")

    # -- routing ----------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: Dict[str, List[str]], raw: bytes) -> int:
        workspace = self.server.workspace
        if path == "/_standin/journal":
            if self._token() != "admin":
                raise ApiError(401, "Unauthorized", "invalid token")
            return self._send(200, list(workspace.journal))
        match = PREFIX.fullmatch(path)
        if not match:
            raise ApiError(404, "NotFound", "no route %s" % path)
        if unquote(match.group(1)) != workspace.config.workspace_id:
            raise ApiError(404, "WorkspaceNotFound", "workspace %s not found" % unquote(match.group(1)))
        who = self._token()
        if who is None:
            raise ApiError(401, "Unauthorized", "invalid or missing workspace token")
        if who == "viewer" and method != "GET":
            raise ApiError(403, "Forbidden", "this token may only read workspace %s" % workspace.config.workspace_id)
        parts = [unquote(p) for p in (match.group(2) or "").split("/") if p]
        return self._dispatch(method, parts, query, raw)

    def _dispatch(self, method: str, parts: List[str], query: Dict[str, List[str]],  # noqa: C901
                  raw: bytes) -> int:
        # pylint: disable=too-many-return-statements,too-many-branches
        workspace = self.server.workspace
        route: Tuple[str, ...] = tuple(parts)
        if route == ("workspace",):
            self._only(method, "GET")
            return self._send(200, workspace.info(), "workspace")
        if route and route[0] == "deployments":
            return self._deployments(method, route[1:], raw)
        if route == ("usersecrets",):
            if method == "GET":
                return self._send(200, workspace.secret_list(), "secret")
            self._only(method, "POST")
            data = parse(raw)
            check_secrets(data)
            workspace.add_secrets(data)
            return self._send(200, {})
        if len(route) == 2 and route[0] == "usersecrets":
            self._only(method, "DELETE")
            workspace.drop_secret(route[1])
            return self._send(200, {})
        if route == ("imagepullsecrets",):
            if method == "GET":
                with workspace.lock:
                    items = [{"metadata": dict(p["metadata"]),
                              "spec": dict((k, v) for k, v in p["spec"].items() if k != "password")}
                             for p in workspace.pull_secrets.values()]
                return self._send(200, items)
            self._only(method, "POST")
            item = check_pull_secret(parse(raw))
            with workspace.lock:
                if item["metadata"]["name"] in workspace.pull_secrets:
                    raise ApiError(409, "ImagePullSecretAlreadyExists", "image pull secret %s already exists"
                                   % item["metadata"]["name"])
                workspace.pull_secrets[item["metadata"]["name"]] = item
            return self._send(200, {})
        if len(route) == 2 and route[0] == "imagepullsecrets":
            self._only(method, "DELETE")
            with workspace.lock:
                if workspace.pull_secrets.pop(route[1], None) is None:
                    raise ApiError(404, "ImagePullSecretNotFound", "image pull secret %s not found" % route[1])
            return self._send(200, {})
        if route and route[0] == "dedicated-node-groups":
            self._only(method, "GET")
            group = workspace.node_group_dict()
            if len(route) == 1:
                return self._send(200, [group], "node_group")
            if route[1] not in (workspace.node_group["id"],):
                raise ApiError(404, "NodeGroupNotFound", "dedicated node group %s not found" % route[1])
            if len(route) == 2:
                return self._send(200, group, "node_group")
            if route[2:] == ("nodes",):
                return self._send(200, workspace.node_dicts(), "node")
        if route == ("shapes",):
            self._only(method, "GET")
            group = (query.get("node_groups") or [None])[0]
            return self._send(200, workspace.shapes(group), "shape")
        raise ApiError(404, "NotFound", "no route /%s" % "/".join(parts))

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(405, "MethodNotAllowed", "%s is not allowed here (allowed: %s)" % (method, ", ".join(allowed)))

    def _deployments(self, method: str, route: Tuple[str, ...], raw: bytes) -> int:
        # pylint: disable=too-many-return-statements
        workspace = self.server.workspace
        config = workspace.config
        if not route:
            if method == "GET":
                with workspace.lock:
                    items = [d.as_dict(config.workspace_id) for d in workspace.deployments.values()]
                return self._send(200, items, "deployment")
            self._only(method, "POST")
            data = parse(raw)
            check_deployment(data)
            deployment = workspace.admit(data)
            ingress = Ingress(workspace, deployment)
            deployment.endpoint = ingress.url
            with self.server.ingress_lock:
                self.server.ingresses[deployment.name] = ingress
            ingress.start()
            workspace.event(deployment, "Normal", "Created", "deployment %s created" % deployment.name)
            self.server.runtime.start(deployment)
            with workspace.lock:
                return self._send(200, deployment.as_dict(config.workspace_id), "deployment")
        with workspace.lock:
            deployment = workspace.deployment(route[0])
        if len(route) == 1:
            if method == "DELETE":
                def gone() -> None:
                    with workspace.lock:
                        if workspace.deployments.get(deployment.name) is deployment:
                            del workspace.deployments[deployment.name]
                    with self.server.ingress_lock:
                        ingress = self.server.ingresses.pop(deployment.name, None)
                    if ingress is not None:
                        ingress.close()
                self.server.runtime.delete(deployment, gone)
                return self._send(200, {})
            self._only(method, "GET")
            with workspace.lock:
                return self._send(200, deployment.as_dict(config.workspace_id), "deployment")
        self._only(method, "GET")
        with workspace.lock:
            if route[1:] == ("replicas",):
                return self._send(200, [r.as_dict() for r in deployment.replicas.values()], "replica")
            if route[1:] == ("readiness",):
                return self._send(200, readiness_view(deployment), "readiness")
            if route[1:] == ("termination",):
                return self._send(200, termination_view(deployment), "termination")
            if route[1:] == ("events",):
                return self._send(200, list(deployment.events), "event")
            replica = deployment.replicas.get(route[2]) if len(route) == 4 and route[1] == "replicas" \
                and route[3] == "log" else None
        if replica is None:
            raise ApiError(404, "NotFound", "no route under deployment %s" % deployment.name)
        return self._logs(replica.cid)

    def _logs(self, cid: Optional[str]) -> int:
        """The replica's log, streamed (chunked) as the API does, until the container stops writing for a while."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if cid:
                for chunk in self.server.docker.follow_logs(cid, LOG_IDLE):
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        return 200
