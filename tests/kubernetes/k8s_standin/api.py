"""The HTTPS front end: bearer-token authentication, discovery, the REST verbs of every resource (list and
watch with selectors and pagination, get, create, replace, patch, delete, deletecollection), the status
subresources, ``pods/log`` and ``pods/portforward``, and Tables for ``kubectl get``.  One log line per
request: method, path, status."""

import base64
import datetime
import hmac
import json
import logging
import socket
import ssl
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import yaml

from . import VERSION
from .cluster import POD, Cluster
from .docker import DockerError
from .model import (BY_PATH, RESOURCES, VERBS, ApiError, Resource, bad_request, fields_match, labels_match,
                    method_not_allowed, parse_field_selector, parse_label_selector)
from .network import PortForward, accept_key, choose_protocol
from .tables import PRINTERS, table, wants_table

LOG = logging.getLogger("k8s_standin")
NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource", {})
UNAUTHORIZED = ApiError(401, "Unauthorized", "Unauthorized")
SUBRESOURCE_KINDS = {"status": None, "log": "Pod", "portforward": "PodPortForwardOptions"}
READ_ONLY = {"nodes": ["get", "list", "patch", "update", "watch"], "endpoints": VERBS}


class ApiServer(ThreadingHTTPServer):
    """TLS on each connection's own thread (a slow handshake does not hold up the others)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], cluster: Cluster, context: ssl.SSLContext, token: str) -> None:
        super().__init__(address, Handler)
        self.cluster = cluster
        self.context = context
        self.token = token

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(30)
            tls = self.context.wrap_socket(request, server_side=True)
            tls.settimeout(None)
        except (ssl.SSLError, OSError):
            request.close()
            return
        self.RequestHandlerClass(tls, client_address, self)


def _int(query: Dict[str, List[str]], name: str) -> Optional[int]:
    values = query.get(name)
    if not values or values[0] == "":
        return None
    try:
        return int(values[0])
    except ValueError:
        raise bad_request('invalid value for %s: "%s"' % (name, values[0])) from None


def _one(query: Dict[str, List[str]], name: str) -> Optional[str]:
    values = query.get(name)
    return values[0] if values else None


class Handler(BaseHTTPRequestHandler):
    """Routes one request."""

    protocol_version = "HTTP/1.1"
    server_version = "k8s-standin/" + VERSION
    server: ApiServer

    def setup(self) -> None:
        """No Nagle delay on answers, as a real API server (Go's net/http) sends them: a response
        written as headers then body would otherwise wait for the client's delayed ACK (~40 ms)."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # pylint: disable=invalid-name
    def do_GET(self) -> None:
        """GET"""
        self.dispatch("GET")

    def do_POST(self) -> None:
        """POST"""
        self.dispatch("POST")

    def do_PUT(self) -> None:
        """PUT"""
        self.dispatch("PUT")

    def do_PATCH(self) -> None:
        """PATCH"""
        self.dispatch("PATCH")

    def do_DELETE(self) -> None:
        """DELETE"""
        self.dispatch("DELETE")
    # pylint: enable=invalid-name

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        """The base class's access log is replaced by :meth:`log_request_line`."""

    def log_request_line(self, code: int, started: float) -> None:
        """Method, path (no query), status, milliseconds."""
        LOG.info("%s %s %d %.0fms", self.command, urlsplit(self.path).path, code, (time.monotonic() - started) * 1000)

    # ------------------------------------------------------------------------------------------
    def send_json(self, code: int, body: Any, warnings: Optional[List[str]] = None) -> None:
        """A JSON answer."""
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(data)))
        for warning in warnings or []:
            self.send_header("Warning", warning)
        self.end_headers()
        self.wfile.write(data)
        self.code = code

    def send_text(self, code: int, data: bytes) -> None:
        """A text/plain answer (pod logs)."""
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.code = code

    def start_chunked(self, content_type: str) -> None:
        """Start a streamed answer (watch, follow)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.code = 200

    def chunk(self, data: bytes) -> None:
        """One chunk; an empty one ends the answer."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def read_body(self) -> Any:
        """The decoded request body (JSON, or YAML for apply patches); None if empty."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw.strip():
            return None
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        try:
            if "yaml" in content_type:
                return yaml.safe_load(raw)
            if "json" not in content_type:
                raise ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - accepted '
                               'media types include: application/json, application/yaml (got "%s")' % content_type)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request("the body of the request could not be decoded: %s" % exc) from None

    def authorized(self) -> bool:
        """Whether the request carries the bearer token."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.server.token.encode())

    def dispatch(self, method: str) -> None:
        """Authenticate, route, answer; API errors become Status objects."""
        started = time.monotonic()
        self.code = 0
        try:
            if not self.authorized():
                self.read_body_quietly()
                raise UNAUTHORIZED
            self.route(method)
        except ApiError as exc:
            self.send_json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # pylint: disable=broad-except
            LOG.exception("%s %s", method, urlsplit(self.path).path)
            self.send_json(500, ApiError(500, "InternalError", "Internal error occurred: %s" % exc).status())
        self.log_request_line(self.code, started)

    def read_body_quietly(self) -> None:
        """Drain the body of a refused request so the connection stays usable."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    # ------------------------------------------------------------------------------------------
    # Routing
    # ------------------------------------------------------------------------------------------
    def route(self, method: str) -> None:  # pylint: disable=too-many-branches,too-many-return-statements
        """Find the resource and verb of the path."""
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        parts = [p for p in url.path.split("/") if p]
        if method == "GET" and self.discovery(parts):
            return
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group_version, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group_version, rest = "%s/%s" % (parts[1], parts[2]), parts[3:]
        else:
            raise NOT_FOUND
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and (group_version, rest[2]) in BY_PATH:
            namespace, rest = rest[1], rest[2:]
        elif len(rest) >= 3 and rest[0] == "namespaces" and group_version == "v1" and rest[2] in ("status", "finalize"):
            pass
        elif len(rest) >= 3 and rest[0] == "namespaces":
            raise NOT_FOUND
        if not rest or (group_version, rest[0]) not in BY_PATH:
            raise NOT_FOUND
        res = BY_PATH[(group_version, rest[0])]
        if res.namespaced is False and namespace is not None:
            raise NOT_FOUND
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3 or (sub and sub not in res.subresources and not (res.kind == "Namespace" and sub == "finalize")):
            raise NOT_FOUND
        verbs = READ_ONLY.get(res.plural, VERBS)
        if name is None:
            self.collection(method, res, namespace, query, verbs)
        elif sub == "log":
            self.pod_log(method, namespace, name, query)
        elif sub == "portforward":
            self.portforward(method, namespace, name, query)
        else:
            self.item(method, res, namespace, name, sub, query, verbs)

    def discovery(self, parts: List[str]) -> bool:
        """``/version``, health, ``/api``, ``/apis`` and the group-version resource lists."""
        cluster = self.server.cluster
        if parts == ["version"]:
            minor = VERSION.split(".")[1]
            self.send_json(200, {"major": "1", "minor": minor, "emulationMajor": "1", "emulationMinor": minor,
                                 "minCompatibilityMajor": "1", "minCompatibilityMinor": str(int(minor) - 1),
                                 "gitVersion": VERSION, "gitCommit": "0000000000000000000000000000000000000000",
                                 "gitTreeState": "clean", "buildDate": cluster.started, "goVersion": "go1.25.0",
                                 "compiler": "gc", "platform": "linux/amd64"})
        elif parts in (["healthz"], ["livez"], ["readyz"]):
            self.send_text(200, b"ok")
        elif parts == ["api"]:
            self.send_json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "%s:%d" % (cluster.config.address, cluster.config.port)}]})
        elif parts == ["apis"]:
            groups = sorted({r.group for r in RESOURCES if r.group})
            self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self.group(g) for g in groups]})
        elif len(parts) == 2 and parts[0] == "apis" and parts[1] in {r.group for r in RESOURCES if r.group}:
            self.send_json(200, dict(self.group(parts[1]), kind="APIGroup", apiVersion="v1"))
        elif parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis"
                                        and any(r.api_version == "%s/%s" % (parts[1], parts[2]) for r in RESOURCES)):
            group_version = "v1" if parts[0] == "api" else "%s/%s" % (parts[1], parts[2])
            self.send_json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                                 "resources": self.resource_list(group_version)})
        else:
            return False
        return True

    @staticmethod
    def group(name: str) -> Dict[str, Any]:
        """An APIGroup entry."""
        versions = sorted({r.version for r in RESOURCES if r.group == name})
        entries = [{"groupVersion": "%s/%s" % (name, v), "version": v} for v in versions]
        return {"name": name, "versions": entries, "preferredVersion": entries[0]}

    @staticmethod
    def resource_list(group_version: str) -> List[Dict[str, Any]]:
        """The APIResource entries of a group version."""
        out: List[Dict[str, Any]] = []
        for res in RESOURCES:
            if res.api_version != group_version:
                continue
            entry = {"name": res.plural, "singularName": res.kind.lower(), "namespaced": res.namespaced,
                     "kind": res.kind, "verbs": READ_ONLY.get(res.plural, VERBS), "storageVersionHash": ""}
            if res.short_names:
                entry["shortNames"] = list(res.short_names)
            if res.kind in ("Pod", "Job", "Service"):
                entry["categories"] = ["all"]
            out.append(entry)
            for sub in res.subresources:
                kind = SUBRESOURCE_KINDS[sub] or res.kind
                verbs = {"status": ["get", "patch", "update"], "log": ["get"], "portforward": ["create", "get"]}[sub]
                out.append({"name": "%s/%s" % (res.plural, sub), "singularName": "", "namespaced": res.namespaced,
                            "kind": kind, "verbs": verbs})
        return out

    # ------------------------------------------------------------------------------------------
    # Collections
    # ------------------------------------------------------------------------------------------
    def collection(self, method: str, res: Resource, namespace: Optional[str], query: Dict[str, List[str]],
                   verbs: List[str]) -> None:
        """list, watch, create, deletecollection."""
        cluster = self.server.cluster
        dry_run = self.dry_run(query)
        if method == "GET":
            labels = parse_label_selector(_one(query, "labelSelector"))
            fields = parse_field_selector(_one(query, "fieldSelector"), res.kind)
            if (_one(query, "watch") or "").lower() in ("true", "1"):
                self.watch(res, namespace, labels, fields, query)
                return
            items, version = cluster.store.list(res, namespace, labels, fields)
            body = self.list_body(res, items, version, query)
            if wants_table(self.headers.get("Accept", "")) and res.kind in PRINTERS:
                body = table(res, body["items"], body["metadata"], _one(query, "includeObject") or "Metadata")
            self.send_json(200, body)
        elif method == "POST" and "create" in verbs:
            if res.namespaced and namespace is None:
                raise method_not_allowed(method)
            warnings: List[str] = []
            body = self.read_body()
            created = cluster.create(res, namespace, body, dry_run, self.field_validation(query), warnings)
            self.send_json(201, created, warnings)
        elif method == "DELETE" and "deletecollection" in verbs:
            options = self.delete_options(query)
            labels = parse_label_selector(_one(query, "labelSelector"))
            fields = parse_field_selector(_one(query, "fieldSelector"), res.kind)
            items, version = cluster.store.list(res, namespace, labels, fields)
            cluster.delete_collection(res, namespace, items, options, dry_run)
            self.send_json(200, self.list_body(res, items, version, {}))
        else:
            raise method_not_allowed(method)

    @staticmethod
    def list_body(res: Resource, items: List[Dict[str, Any]], version: str, query: Dict[str, List[str]]) -> Dict[str, Any]:
        """A ``<Kind>List`` (items without kind/apiVersion, as the server encodes them), paginated by ``limit``."""
        meta: Dict[str, Any] = {"resourceVersion": version}
        token = _one(query, "continue")
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "continue key is not valid: incorrect encoded start "
                                                  "resourceVersion (version meta.k8s.io/v1)") from None
            items = items[start:]
        else:
            start = 0
        limit = _int(query, "limit")
        if limit and limit > 0 and len(items) > limit:
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"start": start + limit, "rv": version}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": res.kind + "List", "apiVersion": res.api_version, "metadata": meta, "items": items}

    def watch(self, res: Resource, namespace: Optional[str], labels: Any, fields: Any,
              query: Dict[str, List[str]]) -> None:
        """Stream ADDED/MODIFIED/DELETED events as JSON lines until ``timeoutSeconds``."""
        store = self.server.cluster.store
        timeout = _int(query, "timeoutSeconds") or 1800
        deadline = time.monotonic() + timeout
        start = _one(query, "resourceVersion") or "0"
        try:
            cursor = int(start)
        except ValueError:
            raise bad_request('invalid resource version "%s"' % start) from None
        self.start_chunked("application/json")
        matching = set()

        def send(kind: str, obj: Dict[str, Any]) -> None:
            self.chunk(json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n")

        if cursor == 0:
            items, version = store.list(res, namespace, labels, fields)
            for obj in items:
                matching.add(obj["metadata"]["uid"])
                send("ADDED", obj)
            cursor = int(version)
        try:
            while time.monotonic() < deadline:
                try:
                    entries = store.history_since(cursor, min(1.0, max(0.0, deadline - time.monotonic())))
                except ApiError as exc:
                    send("ERROR", exc.status())
                    break
                for version, kind, plural, obj in entries:
                    cursor = version
                    if plural != res.plural or (namespace and obj["metadata"].get("namespace") != namespace):
                        continue
                    uid = obj["metadata"]["uid"]
                    selected = labels_match(labels, obj["metadata"].get("labels")) and fields_match(fields, obj)
                    if selected:
                        seen = uid in matching
                        matching.add(uid)
                        send("ADDED" if kind == "MODIFIED" and not seen else kind, obj)
                        if kind == "DELETED":
                            matching.discard(uid)
                    elif uid in matching:
                        matching.discard(uid)
                        send("DELETED", obj)
            self.chunk(b"")
        except OSError:
            self.close_connection = True

    # ------------------------------------------------------------------------------------------
    # Objects
    # ------------------------------------------------------------------------------------------
    def item(self, method: str, res: Resource, namespace: Optional[str], name: str, sub: Optional[str],
             query: Dict[str, List[str]], verbs: List[str]) -> None:
        """get, replace, patch, delete of one object (or its status)."""
        cluster = self.server.cluster
        dry_run = self.dry_run(query)
        warnings: List[str] = []
        if res.namespaced and namespace is None:
            raise NOT_FOUND
        if method == "GET":
            obj = cluster.store.get(res, namespace, name)
            if sub is None and wants_table(self.headers.get("Accept", "")) and res.kind in PRINTERS:
                obj = table(res, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                            _one(query, "includeObject") or "Metadata")
            self.send_json(200, obj)
        elif method == "PUT" and "update" in verbs:
            body = self.read_body()
            if res.kind == "Namespace" and sub == "finalize":
                sub = None
            self.send_json(200, cluster.replace(res, namespace, name, body, dry_run, sub, self.field_validation(query),
                                                warnings), warnings)
        elif method == "PATCH" and "patch" in verbs:
            body = self.read_body()
            content_type = self.headers.get("Content-Type") or "application/json"
            if content_type.split(";")[0].strip() == "application/json":
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                               "media types include: application/json-patch+json, application/merge-patch+json, "
                               "application/apply-patch+yaml")
            self.send_json(200, cluster.patch(res, namespace, name, body, content_type, dry_run, sub,
                                              self.field_validation(query), warnings), warnings)
        elif method == "DELETE" and "delete" in verbs and sub is None:
            code, body = cluster.delete(res, namespace, name, self.delete_options(query), dry_run, warnings)
            self.send_json(code, body, warnings)
        else:
            raise method_not_allowed(method)

    def delete_options(self, query: Dict[str, List[str]]) -> Dict[str, Any]:
        """DeleteOptions from the body, then the query parameters."""
        body = self.read_body() or {}
        if not isinstance(body, dict):
            raise bad_request("the body of a delete must be a DeleteOptions object")
        options = dict(body)
        if _one(query, "propagationPolicy") and "propagationPolicy" not in options:
            options["propagationPolicy"] = _one(query, "propagationPolicy")
        if _int(query, "gracePeriodSeconds") is not None and options.get("gracePeriodSeconds") is None:
            options["gracePeriodSeconds"] = _int(query, "gracePeriodSeconds")
        if _one(query, "orphanDependents") and options.get("orphanDependents") is None:
            options["orphanDependents"] = _one(query, "orphanDependents") == "true"
        return options

    @staticmethod
    def dry_run(query: Dict[str, List[str]]) -> bool:
        """``dryRun=All``."""
        values = query.get("dryRun") or []
        for value in values:
            if value != "All":
                raise bad_request('Invalid dry run value: "%s": supported values: "All"' % value)
        return bool(values)

    @staticmethod
    def field_validation(query: Dict[str, List[str]]) -> str:
        """``fieldValidation``: Strict here unless the client asks for Warn or Ignore."""
        value = _one(query, "fieldValidation") or "Strict"
        if value not in ("Strict", "Warn", "Ignore"):
            raise bad_request('fieldValidation: Unsupported value: "%s": supported values: "Ignore", "Strict", "Warn"' % value)
        return value

    # ------------------------------------------------------------------------------------------
    # pods/log and pods/portforward
    # ------------------------------------------------------------------------------------------
    def pod_log(self, method: str, namespace: Optional[str], name: str, query: Dict[str, List[str]]) -> None:
        """The container's output (tailLines, sinceSeconds, timestamps, limitBytes, previous, follow)."""
        if method != "GET":
            raise method_not_allowed(method)
        cluster = self.server.cluster
        pod = cluster.store.get(POD, namespace, name)
        cid = cluster.kubelet.log_container(pod, _one(query, "container"), _one(query, "previous") == "true")
        tail = _int(query, "tailLines")
        since_seconds = _int(query, "sinceSeconds")
        since = int(time.time()) - since_seconds if since_seconds else None
        if _one(query, "sinceTime"):
            since = int(datetime.datetime.fromisoformat(_one(query, "sinceTime").replace("Z", "+00:00")).timestamp())
        timestamps = _one(query, "timestamps") == "true"
        limit = _int(query, "limitBytes")
        docker = cluster.kubelet.docker
        if _one(query, "follow") == "true":
            self.start_chunked("text/plain")
            sent = 0
            try:
                for data in docker.follow_logs(cid, tail, timestamps, since):
                    if limit is not None:
                        data = data[:max(0, limit - sent)]
                    if data:
                        self.chunk(data)
                        sent += len(data)
                    if limit is not None and sent >= limit:
                        break
                self.chunk(b"")
            except (OSError, DockerError):
                self.close_connection = True
            return
        data = docker.logs(cid, tail, timestamps, since)
        if limit is not None:
            data = data[:limit]
        self.send_text(200, data)

    def portforward(self, method: str, namespace: Optional[str], name: str, query: Dict[str, List[str]]) -> None:
        """Upgrade to a WebSocket and forward the ``ports`` to the pod."""
        if method not in ("GET", "POST"):
            raise method_not_allowed(method)
        pod = self.server.cluster.store.get(POD, namespace, name)
        ports: List[int] = []
        for value in query.get("ports") or []:
            for part in value.split(","):
                try:
                    port = int(part)
                except ValueError:
                    raise bad_request('invalid port "%s"' % part) from None
                if not 0 < port < 65536:
                    raise bad_request("port %d must be > 0 and < 65536" % port)
                ports.append(port)
        if not ports:
            raise bad_request("at least one port must be specified")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not self.headers.get("Sec-WebSocket-Key"):
            raise bad_request("Upgrade request required")
        if pod["status"].get("phase") != "Running" or not pod["status"].get("podIP"):
            raise bad_request("unable to upgrade connection: pod is not running: %s" % pod["status"].get("phase"))
        protocol = choose_protocol(self.headers.get("Sec-WebSocket-Protocol", ""))
        if protocol is None:
            raise bad_request("unable to upgrade connection: no supported subprotocol offered: %s; supported: "
                              "v4.channel.k8s.io, portforward.k8s.io" % self.headers.get("Sec-WebSocket-Protocol", ""))
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(self.headers["Sec-WebSocket-Key"]))
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()
        self.code = 101
        self.close_connection = True
        PortForward(self.connection, pod["status"]["podIP"], ports, name, pod["metadata"]["uid"]).run()
