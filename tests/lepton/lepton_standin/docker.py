"""A small Docker Engine API client over the unix socket.

Container settings (the environment included, with the secret values it resolved) travel in the JSON
body of ``POST /containers/create``: no value a replica is given ever appears on a command line."""

import http.client
import json
import os
import socket
import struct
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import quote, urlencode


class DockerError(Exception):
    """The engine answered an error (``status`` is its HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def socket_path() -> str:
    """The engine's socket: ``DOCKER_HOST`` if it is a unix:// address, else /var/run/docker.sock."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock"


def demux(data: bytes) -> bytes:
    """The payload of a multiplexed (non-TTY) log stream, stdout and stderr interleaved as written."""
    out, pos = bytearray(), 0
    while pos + 8 <= len(data):
        size = struct.unpack(">I", data[pos + 4:pos + 8])[0]
        out += data[pos + 8:pos + 8 + size]
        pos += 8 + size
    return bytes(out)


class Docker:
    """The Engine API calls the replica workers need; one connection per call (calls come from many threads)."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or socket_path()
        self.prefix = ""
        version = self.call("GET", "/version")
        self.version = version.get("Version", "")
        self.prefix = "/v" + version.get("ApiVersion", "1.41")

    def call(self, method: str, path: str, body: Any = None, query: Optional[Dict[str, Any]] = None,
             timeout: float = 120.0, raw: bool = False) -> Any:
        """One request; the decoded JSON answer (or bytes if ``raw``); DockerError on an error status."""
        url = self.prefix + path + ("?" + urlencode(query) if query else "")
        headers = {"Host": "docker"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = _UnixConnection(self.path, timeout)
        try:
            conn.request(method, url, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            try:
                message = json.loads(data).get("message", "")
            except ValueError:
                message = data.decode(errors="replace")
            raise DockerError(response.status, message or response.reason)
        if raw:
            return data
        return json.loads(data) if data else None

    def has_image(self, name: str) -> bool:
        """Whether the engine has image ``name`` (the stand-in never pulls: no registry is reachable)."""
        try:
            self.call("GET", "/images/%s/json" % quote(name, safe=":/@"))
            return True
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise

    def run(self, name: str, config: Dict[str, Any]) -> str:
        """Create and start a container; its id."""
        cid = self.call("POST", "/containers/create", config, {"name": name})["Id"]
        try:
            self.call("POST", "/containers/%s/start" % cid)
        except DockerError:
            self.remove(cid)
            raise
        return cid

    def inspect(self, cid: str) -> Optional[Dict[str, Any]]:
        """``docker inspect``; None if gone."""
        try:
            return self.call("GET", "/containers/%s/json" % cid)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    def stop(self, cid: str, grace: int) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        try:
            self.call("POST", "/containers/%s/stop" % cid, query={"t": max(0, grace)}, timeout=grace + 60)
        except DockerError as exc:
            if exc.status not in (304, 404):
                raise

    def remove(self, cid: str) -> None:
        """Force-remove a container and its anonymous volumes."""
        try:
            self.call("DELETE", "/containers/%s" % cid, query={"force": "true", "v": "true"})
        except DockerError as exc:
            if exc.status != 404:
                raise

    def containers(self, label: str) -> List[Dict[str, Any]]:
        """Every container (running or not) carrying ``label`` (``key`` or ``key=value``)."""
        return self.call("GET", "/containers/json", query={"all": "true", "filters": json.dumps({"label": [label]})})

    def logs(self, cid: str, tail: Optional[int] = None) -> bytes:
        """The container's output so far."""
        query = {"stdout": "1", "stderr": "1", "tail": "all" if tail is None else str(tail)}
        return demux(self.call("GET", "/containers/%s/logs" % cid, query=query, raw=True))

    def follow_logs(self, cid: str, idle: float) -> Iterator[bytes]:
        """The container's output so far, then what it writes until it stops, the caller stops reading, or
        nothing comes for ``idle`` seconds."""
        query = {"stdout": "1", "stderr": "1", "follow": "1", "tail": "all"}
        conn = _UnixConnection(self.path, idle)
        try:
            conn.request("GET", self.prefix + "/containers/%s/logs?%s" % (cid, urlencode(query)), headers={"Host": "docker"})
            response = conn.getresponse()
            if response.status >= 400:
                return
            while True:
                try:
                    header = response.read(8)
                    if len(header) < 8:
                        return
                    size = struct.unpack(">I", header[4:8])[0]
                    chunk = response.read(size)
                except (socket.timeout, OSError):
                    return
                yield chunk
        finally:
            conn.close()
