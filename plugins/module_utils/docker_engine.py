# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small client for the Docker Engine API: the part local-docker uses.

It speaks HTTP/1.1 over one kept-alive connection, through the engine's unix
socket, TCP (TLS when ``DOCKER_TLS_VERIFY``/``DOCKER_TLS`` or ``https://`` ask
for it, with the certificates in ``DOCKER_CERT_PATH``) or SSH
(``ssh host docker system dial-stdio``, as the docker CLI does). The API
version comes from the engine's own ``/_ping`` answer, so connecting costs one
small request. Registry credentials for pulls come from the docker CLI's
config (``auths``, ``credHelpers``, ``credsStore``) and travel only in the
``X-Registry-Auth`` header to the engine.

Only the standard library is needed: a module run that starts a container
imports nothing that is not already loaded for readiness polling.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os
import re
import socket
import subprocess

import http.client as http_client
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_HOST = "unix:///var/run/docker.sock"
# Newest API version this client is written against; an older engine's own version is used as is.
MAX_API_VERSION = (1, 47)
# Oldest engine API the requests below are valid for (Docker 19.03: DeviceRequests).
MIN_API_VERSION = (1, 40)
DOCKER_HUB = "https://index.docker.io/v1/"


class EngineError(Exception):
    """The engine answered with an error (``status``) or could not be reached (``status`` None)."""

    def __init__(self, message, status=None):
        super(EngineError, self).__init__(message)
        self.status = status


class NotFound(EngineError):
    """404: no such container or image."""


class UnsupportedEngine(EngineError):
    """The engine answers, but speaks an API older than this client needs."""


def split_image(ref):
    """(repository, tag or None, digest or None) of an image reference."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    name_start = ref.rfind("/") + 1
    if ":" in ref[name_start:]:
        ref, tag = ref.rsplit(":", 1)
    return ref, tag, digest


_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")


def registry_of(repository):
    """The registry host an image repository lives on; None for Docker Hub (named or not)."""
    first, sep, _rest = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost") and first not in _HUB_HOSTS:
        return first
    return None


class _UnixConnection(http_client.HTTPConnection):
    def __init__(self, path, timeout):
        http_client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _SSHConnection(http_client.HTTPConnection):
    """HTTP through ``ssh host docker system dial-stdio`` (``argv``), as the docker CLI does."""

    def __init__(self, argv, timeout):
        http_client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self._argv = argv
        self._proc = None
        self._stderr = None
        self._said = ""

    def connect(self):
        import tempfile

        ours, theirs = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(self._argv, stdin=theirs, stdout=theirs, stderr=self._stderr,
                                          close_fds=True, start_new_session=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(self.timeout)
        self.sock = ours

    def diagnose(self):
        """What ssh said before it exited (e.g. why it could not log in); "" while it runs."""
        if self._proc is not None:
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                return ""
            self._said = self._read_stderr()
        return self._said

    def _read_stderr(self):
        if self._stderr is None:
            return self._said
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()

    # close() is http.client's: it also calls it to hand the socket over to a response that
    # ends the connection, so it must not stop ssh while that response is still being read.
    def shutdown(self):
        """Close the connection and end ssh (it exits by itself once its stdin closes)."""
        self.close()
        if self._proc is not None:
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._said = self._read_stderr()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _tls_context(environ, verify):
    import ssl

    cert_dir = environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")
    if verify:
        context = ssl.create_default_context(cafile=_existing(os.path.join(cert_dir, "ca.pem")))
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert, key = os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        context.load_cert_chain(cert, key)
    return context


def _existing(path):
    return path if os.path.exists(path) else None


def connection_factory(host, timeout, environ=None, ssh_command=None):
    """A function making a fresh HTTP connection to the engine at ``host`` (a DOCKER_HOST URL).

    For ssh:// hosts ``ssh_command`` is the argv whose stdin and stdout carry the connection
    (``ssh ... host docker system dial-stdio``; the local-docker driver builds it).
    """
    environ = os.environ if environ is None else environ
    url = urlsplit(host)
    scheme = url.scheme.lower()
    if scheme == "unix":
        path = (url.netloc + url.path) or "/var/run/docker.sock"
        return lambda: _UnixConnection(path, timeout)
    if scheme == "ssh":
        if not ssh_command:
            raise EngineError("docker_host %s needs the ssh command that reaches it" % host)
        argv = list(ssh_command)
        return lambda: _SSHConnection(argv, timeout)
    if scheme in ("tcp", "http", "https"):
        if not url.hostname:
            raise EngineError("docker_host %s names no host; use tcp://host:port" % host)
        verify = bool(environ.get("DOCKER_TLS_VERIFY"))
        tls = scheme == "https" or verify or bool(environ.get("DOCKER_TLS"))
        port = url.port or (2376 if tls else 2375)
        if tls:
            context = _tls_context(environ, verify)
            return lambda: http_client.HTTPSConnection(url.hostname, port, timeout=timeout, context=context)
        return lambda: http_client.HTTPConnection(url.hostname, port, timeout=timeout)
    raise EngineError("docker_host %s is not unix://, tcp:// or ssh://" % host)


class DockerEngine(object):
    """One Docker engine, reached as ``host`` (a DOCKER_HOST URL)."""

    def __init__(self, host, timeout=60, environ=None, ssh_command=None):
        self.environ = os.environ if environ is None else environ
        self.host = host
        self.timeout = timeout
        self._connect = connection_factory(self.host, timeout, self.environ, ssh_command)
        self._conn = None
        self.api_version = None

    # -- transport -----------------------------------------------------------
    def close(self):
        if self._conn is not None:
            getattr(self._conn, "shutdown", self._conn.close)()
            self._conn = None

    def _exchange(self, method, url, body, headers):
        """Send one request and return its open response.

        A GET on a kept-alive connection the engine has dropped is sent again once, on a new one.
        """
        reused = self._conn is not None
        if not reused:
            self._conn = self._connect()
        try:
            self._conn.request(method, url, body=body, headers=headers)
            return self._conn.getresponse()
        except (http_client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused or method != "GET":
                raise
        self.close()
        self._conn = self._connect()
        self._conn.request(method, url, body=body, headers=headers)
        return self._conn.getresponse()

    def request(self, method, path, query=None, body=None, headers=None, stream=False, versioned=True):
        """(status, headers, bytes or the open response when ``stream``); raises EngineError."""
        if versioned and self.api_version is None:
            self.ping()
        url = ("/v%s" % self.api_version if versioned else "") + path
        if query:
            url += "?" + urlencode(query)
        all_headers = {"Host": "docker"}
        if body is not None:
            body = json.dumps(body).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        try:
            response = self._exchange(method, url, body, all_headers)
            if stream and response.status < 400:
                return response.status, response.headers, response
            data = response.read()
        except (OSError, http_client.HTTPException) as exc:
            said = self._conn.diagnose() if hasattr(self._conn, "diagnose") else ""
            self.close()
            raise EngineError("cannot reach the Docker engine at %s: %s%s"
                              % (self.host, str(exc) or type(exc).__name__, " (ssh: %s)" % said if said else ""))
        if response.will_close:
            self.close()
        if response.status >= 400:
            raise self._error(response.status, data)
        return response.status, response.headers, data

    @staticmethod
    def _error(status, data):
        try:
            message = json.loads(data.decode("utf-8")).get("message")
        except (ValueError, AttributeError, UnicodeDecodeError):
            message = None
        message = message or data.decode("utf-8", "replace").strip() or "HTTP %d" % status
        return (NotFound if status == 404 else EngineError)(message, status)

    def _json(self, method, path, query=None, body=None):
        data = self.request(method, path, query=query, body=body)[2]
        return json.loads(data.decode("utf-8")) if data else None

    # -- engine --------------------------------------------------------------
    def ping(self):
        """Check the engine answers and settle the API version from its ``API-Version`` header."""
        headers = self.request("GET", "/_ping", versioned=False)[1]
        reported = headers.get("API-Version") or ""
        version = _version_tuple(reported)
        # Engines have sent API-Version since API 1.25; one that does not is older still.
        if version is None or version < MIN_API_VERSION:
            raise UnsupportedEngine("the Docker engine at %s speaks API %s; tao.inference needs %d.%d or newer "
                                    "(Docker 19.03+): upgrade Docker there"
                                    % ((self.host, reported or "older than 1.25") + MIN_API_VERSION))
        self.api_version = "%d.%d" % min(version, MAX_API_VERSION)
        return self.api_version

    def info(self):
        return self._json("GET", "/info")

    # -- images --------------------------------------------------------------
    def image_inspect(self, ref):
        return self._json("GET", "/images/%s/json" % quote(ref, safe="/:@"))

    def image_pull(self, ref):
        """Pull ``ref`` (``:latest`` when it names no tag), with the docker CLI's stored credentials."""
        repository, tag, digest = split_image(ref)
        if digest:
            query = {"fromImage": "%s@%s" % (repository, digest)}
        else:
            query = {"fromImage": repository, "tag": tag or "latest"}
        headers = {}
        auth = registry_auth(registry_of(repository), self.environ)
        if auth:
            headers["X-Registry-Auth"] = auth
        response = self.request("POST", "/images/create", query=query, headers=headers, stream=True)[2]
        last = None
        try:
            for line in response:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line.decode("utf-8"))
                except ValueError:
                    continue
                if event.get("error"):
                    raise EngineError(event.get("error"))
                last = event.get("status") or last
        except (OSError, http_client.HTTPException) as exc:
            self.close()
            raise EngineError("the pull of %s was cut off: %s" % (ref, exc))
        except EngineError:
            self.close()  # the rest of the stream is unread: this connection cannot serve another request
            raise
        if response.will_close:
            self.close()
        return last

    # -- containers ------------------------------------------------------------
    def container_create(self, name, config):
        return self._json("POST", "/containers/create", query={"name": name}, body=config)["Id"]

    def container_start(self, ident):
        self.request("POST", "/containers/%s/start" % quote(ident))

    def container_inspect(self, ident):
        """The container's inspect document, or None when there is no such container."""
        try:
            return self._json("GET", "/containers/%s/json" % quote(ident))
        except NotFound:
            return None

    def container_remove(self, ident):
        """Remove (killing it if it runs); False when it was already gone."""
        try:
            self.request("DELETE", "/containers/%s" % quote(ident), query={"force": "1"})
        except NotFound:
            return False
        return True

    def container_list(self, label):
        """Inspect documents of every container (running or not) carrying ``label``."""
        found = self._json("GET", "/containers/json",
                           query={"all": "1", "filters": json.dumps({"label": [label]})}) or []
        documents = (self.container_inspect(item["Id"]) for item in found)
        return [doc for doc in documents if doc is not None]

    def container_logs(self, ident, tail=40):
        """The last ``tail`` lines of stdout and stderr, interleaved as written."""
        _status, _headers, data = self.request(
            "GET", "/containers/%s/logs" % quote(ident), query={"stdout": "1", "stderr": "1", "tail": str(tail)})
        return demux(data).decode("utf-8", "replace")


def demux(data):
    """The payload of a multiplexed log stream (8-byte frame headers); raw TTY output is returned as is."""
    if len(data) < 8 or data[0] not in (0, 1, 2) or data[1:4] != b"\x00\x00\x00":
        return data
    out = []
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset + 4:offset + 8], "big")
        out.append(data[offset + 8:offset + 8 + size])
        offset += 8 + size
    return b"".join(out)


def _version_tuple(text):
    match = re.match(r"^(\d+)\.(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


# -- registry credentials (the docker CLI's config.json) -------------------------
def _docker_config(environ):
    path = os.path.join(environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker"),
                        "config.json")
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _auth_key_matches(key, registry):
    host = urlsplit(key).netloc if "://" in key else key.split("/")[0]
    if registry is None:
        return host in _HUB_HOSTS
    return host == registry


def _from_helper(helper, server):
    try:
        proc = subprocess.run(["docker-credential-%s" % helper, "get"], input=server.encode("utf-8"),
                              capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        found = json.loads(proc.stdout.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    if found.get("Username") == "<token>":
        return {"identitytoken": found.get("Secret")}
    return {"username": found.get("Username"), "password": found.get("Secret")}


def _stored_auth(value):
    """Credentials of one ``auths`` entry; None when it holds none or is malformed (it is then skipped)."""
    try:
        if value.get("identitytoken"):
            return {"identitytoken": value["identitytoken"]}
        if value.get("auth"):
            user, _sep, password = base64.b64decode(value["auth"]).decode("utf-8").partition(":")
            return {"username": user, "password": password}
        if value.get("username"):
            return {"username": value["username"], "password": value.get("password")}
    except (AttributeError, TypeError, ValueError):
        return None
    return None


def registry_auth(registry, environ=None):
    """The ``X-Registry-Auth`` header value for ``registry`` (None: Docker Hub), or None without credentials."""
    config = _docker_config(os.environ if environ is None else environ)
    if not isinstance(config, dict):
        return None
    server = registry or DOCKER_HUB
    helpers = config.get("credHelpers")
    helper = (helpers.get(server) if isinstance(helpers, dict) else None) or config.get("credsStore")
    if not isinstance(helper, str):
        helper = None
    found = None
    if helper:
        found = _from_helper(helper, server)
    if found is None:
        auths = config.get("auths")
        for key, value in (auths.items() if isinstance(auths, dict) else ()):
            if _auth_key_matches(key, registry):
                found = _stored_auth(value)
                if found:
                    break
    if not found:
        return None
    found["serveraddress"] = server
    return base64.urlsafe_b64encode(json.dumps(found).encode("utf-8")).decode("ascii")
