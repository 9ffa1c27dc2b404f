# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small client for the Docker Engine API: the part local-docker uses.

It speaks HTTP/1.1 over one kept-alive connection, through the engine's unix
socket, TCP (TLS when asked, see :func:`resolve_endpoint`) or SSH
(``ssh host docker system dial-stdio``, as the docker CLI does). The engine is
chosen as the docker CLI chooses it: an explicit address, else ``DOCKER_HOST``,
else the docker context in effect, else the local socket; a context that cannot
be read is an error, never a silent fall-back to the local socket. The API
version comes from the engine's own ``/_ping`` answer, so connecting costs one
small request. Registry credentials for pulls come from the docker CLI's
config (``auths``, ``credHelpers``, ``credsStore``) and travel only in the
``X-Registry-Auth`` header to the engine, never over a network in clear.
Every answer is read with a size limit.

Only the standard library is needed: a module run that starts a container
imports nothing that is not already loaded for readiness polling.
"""

import base64
import json
import os
import re
import socket
import subprocess

import http.client as http_client
from urllib.parse import quote, urlencode, urlsplit

from ansible_collections.tao.inference.plugins.module_utils.trust import child_environ, is_loopback, ssh_environ

DEFAULT_HOST = "unix:///var/run/docker.sock"
# Newest API version this client is written against; an older engine's own version is used as is.
MAX_API_VERSION = (1, 47)
# Oldest engine API the requests below are valid for (Docker 19.03: DeviceRequests).
MIN_API_VERSION = (1, 40)
DOCKER_HUB = "https://index.docker.io/v1/"
# The most read from the engine: one JSON answer, the logs of one container, one line of a pull's progress.
JSON_LIMIT = 16 << 20
LOG_LIMIT = 2 << 20
LINE_LIMIT = 1 << 20
_TCP_SCHEMES = ("tcp", "http", "https")
_SCHEMES = ("unix", "ssh") + _TCP_SCHEMES


class EngineError(Exception):
    """The engine answered with an error (``status``) or could not be reached (``status`` None)."""

    def __init__(self, message, status=None):
        super(EngineError, self).__init__(message)
        self.status = status


class NotFound(EngineError):
    """404: no such container or image."""


class UnsupportedEngine(EngineError):
    """The engine answers, but speaks an API older than this client needs."""


class EngineConfigError(EngineError):
    """What says where the engine is or how to reach it is wrong or incomplete (its address, TLS files,
    a docker context), or a request would be unsafe on that transport; nothing was sent."""


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
            # ssh lives as long as the connection: its environment holds no secret (nor can SendEnv pass one on).
            self._proc = subprocess.Popen(self._argv, stdin=theirs, stdout=theirs, stderr=self._stderr,  # pylint: disable=ansible-bad-function
                                          close_fds=True, start_new_session=True, env=ssh_environ())
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


class TLSFiles(object):
    """TLS towards a tcp:// engine: ``verify`` its certificate (against ``ca``; the system's CAs when
    ``ca`` is None) and present the client certificate ``cert``/``key`` when they are given."""

    def __init__(self, verify, ca=None, cert=None, key=None):
        self.verify = verify
        self.ca = ca
        self.cert = cert
        self.key = key

    def __repr__(self):
        return "TLSFiles(verify=%r, ca=%r, cert=%r, key=%r)" % (self.verify, self.ca, self.cert, self.key)


class Endpoint(object):
    """One engine: ``host`` (a DOCKER_HOST URL), ``tls`` (TLSFiles; None for none) and ``context``
    (the docker context it was read from; None when it was named directly)."""

    def __init__(self, host, tls=None, context=None):
        self.host = host
        self.tls = tls
        self.context = context

    def __repr__(self):
        return "Endpoint(%r, tls=%r, context=%r)" % (self.host, self.tls, self.context)

    def in_clear(self):
        """True when requests cross a network to an engine that was not authenticated: tcp:// to a host
        that is not loopback, without TLS or with TLS that does not verify the engine's certificate."""
        if self.tls is not None and self.tls.verify:
            return False
        url = urlsplit(self.host)
        return url.scheme.lower() in _TCP_SCHEMES and not is_loopback(url.hostname or "")


def _parse(host):
    """(scheme, split URL, port or None) of an engine address; EngineConfigError when it is not one this
    client speaks (a tcp:// port must be a number from 0 to 65535)."""
    try:
        url = urlsplit(host)
        scheme = url.scheme.lower()
        port = url.port if scheme in _TCP_SCHEMES else None
    except ValueError as exc:
        raise EngineConfigError("docker_host %s is not a valid address (%s); use tcp://host:port" % (host, exc))
    if scheme not in _SCHEMES:
        raise EngineConfigError("docker_host %s is not unix://, tcp:// or ssh://" % host)
    if scheme in _TCP_SCHEMES and not url.hostname:
        raise EngineConfigError("docker_host %s names no host; use tcp://host:port" % host)
    return scheme, url, port


def _flag(value, environ, name):
    """An explicit setting when given (not None), else whether the environment variable ``name`` is non-empty."""
    return bool(environ.get(name)) if value is None else bool(value)


def _config_dir(environ):
    return environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")


def _client_pair(directory, where):
    """(cert, key) in ``directory`` when both are there, (None, None) when neither; half a pair is an error."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    has_cert, has_key = os.path.isfile(cert), os.path.isfile(key)
    if has_cert != has_key:
        there, missing = (cert, key) if has_cert else (key, cert)
        raise EngineConfigError(
            "the TLS client certificate for %s is half there: %s exists but %s does not; put both cert.pem "
            "and key.pem in %s (or neither, when the engine asks for no client certificate)"
            % (where, there, missing, directory))
    return (cert, key) if has_cert else (None, None)


def _direct_tls(host, scheme, tls, tls_verify, cert_path, environ):
    """The TLS of a tcp:// engine named by its address (None: plain TCP).

    TLS is on when ``tls_verify`` is (verifying the engine), when ``tls`` is, or for ``https://``; each
    setting that is None falls back to its environment variable (DOCKER_TLS_VERIFY, DOCKER_TLS: on when
    non-empty). The files are ``ca.pem``, ``cert.pem`` and ``key.pem`` in ``cert_path``, else
    DOCKER_CERT_PATH, else ``~/.docker``. Verifying needs ``ca.pem``; a client certificate is presented
    when both ``cert.pem`` and ``key.pem`` are there, and half of that pair is an error.
    """
    verify = _flag(tls_verify, environ, "DOCKER_TLS_VERIFY")
    if not (verify or scheme == "https" or _flag(tls, environ, "DOCKER_TLS")):
        return None
    cert_dir = os.path.expanduser(cert_path or environ.get("DOCKER_CERT_PATH") or os.path.join("~", ".docker"))
    ca = os.path.join(cert_dir, "ca.pem")
    if not os.path.isfile(ca):
        if verify:
            raise EngineConfigError(
                "TLS verification of the Docker engine at %s is on (docker_tls_verify / DOCKER_TLS_VERIFY) but "
                "its CA certificate %s does not exist: put the CA that signed the engine's certificate there, or "
                "set docker_cert_path / DOCKER_CERT_PATH to the directory holding ca.pem, cert.pem and key.pem"
                % (host, ca))
        ca = None
    cert, key = _client_pair(cert_dir, "the Docker engine at %s" % host)
    return TLSFiles(verify, ca, cert, key)


_CONTEXT_HINT = "run `docker context ls` to see the contexts there are, or set docker_host to the engine's address"


def _context_name(environ):
    """(name, where it is set) of the docker context in effect: DOCKER_CONTEXT, else ``currentContext`` in the
    docker CLI's config.json; (None, None) when neither names one."""
    if environ.get("DOCKER_CONTEXT"):
        return environ["DOCKER_CONTEXT"], "DOCKER_CONTEXT"
    path = os.path.join(_config_dir(environ), "config.json")
    try:
        with open(path, "rb") as handle:
            config = json.loads(handle.read(JSON_LIMIT).decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except (OSError, ValueError, RecursionError) as exc:
        raise _unknown_context(path, exc)
    name = config.get("currentContext") if isinstance(config, dict) else None
    if not isinstance(config, dict) or not isinstance(name, (str, type(None))):
        raise _unknown_context(path, "its currentContext is not a name" if isinstance(config, dict)
                               else "it is not a JSON object")
    return (name, "currentContext in %s" % path) if name else (None, None)


def _unknown_context(path, why):
    return EngineConfigError(
        "cannot tell which docker context is in effect: the docker CLI's configuration %s cannot be read (%s); "
        "fix it, or set docker_host (or DOCKER_HOST) to the engine's address" % (path, why))


def _context_endpoint(name, where, tls, tls_verify, cert_path, environ):
    """The engine of the docker context ``name``, as the docker CLI stores it.

    A context lives under ``$DOCKER_CONFIG/contexts`` (``~/.docker`` when DOCKER_CONFIG is empty), in
    directories named by the SHA-256 of its name: ``meta/<id>/meta.json`` holds ``Endpoints.docker.Host``
    and ``Endpoints.docker.SkipTLSVerify``, ``tls/<id>/docker/`` its ``ca.pem``, ``cert.pem`` and
    ``key.pem``. A tcp:// context uses TLS when it has any of those files or skips verification, verifying
    the engine (against its ca.pem, else the system's CAs) unless it skips verification. It is refused when
    it is weaker than ``tls``/``tls_verify`` (or DOCKER_TLS/DOCKER_TLS_VERIFY) ask; ``cert_path`` cannot
    apply to it.
    """
    import hashlib

    ident = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
    base = os.path.join(_config_dir(environ), "contexts")
    meta_path = os.path.join(base, "meta", ident, "meta.json")
    label = "docker context %r (%s)" % (name, where)
    try:
        with open(meta_path, "rb") as handle:
            meta = json.loads(handle.read(JSON_LIMIT).decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise EngineConfigError("%s does not exist (there is no %s): %s" % (label, meta_path, _CONTEXT_HINT))
    except (OSError, ValueError, RecursionError) as exc:
        raise EngineConfigError("%s cannot be read from %s (%s): %s" % (label, meta_path, exc, _CONTEXT_HINT))
    endpoints = meta.get("Endpoints") if isinstance(meta, dict) else None
    docker = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = docker.get("Host") if isinstance(docker, dict) else None
    if not isinstance(host, str) or not host:
        raise EngineConfigError("%s has no docker endpoint (Endpoints.docker.Host in %s): %s"
                                % (label, meta_path, _CONTEXT_HINT))
    if cert_path:
        raise EngineConfigError(
            "docker_cert_path applies to the engine named by docker_host or DOCKER_HOST, but %s is in effect and "
            "keeps its own TLS files in %s: set docker_host too, or leave docker_cert_path out"
            % (label, os.path.join(base, "tls", ident, "docker")))
    scheme = _parse(host)[0]
    files = None
    if scheme in _TCP_SCHEMES:
        skip = docker.get("SkipTLSVerify") is True
        tls_dir = os.path.join(base, "tls", ident, "docker")
        ca = os.path.join(tls_dir, "ca.pem")
        ca = ca if os.path.isfile(ca) else None
        cert, key = _client_pair(tls_dir, label)
        if ca or cert or skip or scheme == "https":
            files = TLSFiles(not skip, ca, cert, key)
        asked_verify = _flag(tls_verify, environ, "DOCKER_TLS_VERIFY")
        if (asked_verify and (files is None or not files.verify)) or (files is None and _flag(tls, environ,
                                                                                              "DOCKER_TLS")):
            raise EngineConfigError(
                "%s reaches %s %s, but %s asks for %s: give the context the engine's TLS files (`docker context "
                "update %s --docker host=...,ca=...,cert=...,key=...`), or set docker_host"
                % (label, host, "without TLS" if files is None else "without verifying the engine's certificate",
                   "docker_tls_verify / DOCKER_TLS_VERIFY" if asked_verify else "docker_tls / DOCKER_TLS",
                   "a verified TLS connection" if asked_verify else "TLS", name))
    return Endpoint(host, files, context=name)


def resolve_endpoint(docker_host=None, tls=None, tls_verify=None, cert_path=None, environ=None):
    """The engine to use and how to reach it, chosen as the docker CLI chooses it.

    ``docker_host`` when given, else DOCKER_HOST, else the docker context DOCKER_CONTEXT names, else the
    ``currentContext`` of ``$DOCKER_CONFIG/config.json``, else the local socket; the context "default" is
    the local socket. A context that does not exist, cannot be read or has no docker endpoint is an error.
    TLS for an address named directly is as :func:`_direct_tls` says; for a context, as
    :func:`_context_endpoint` says. Raises EngineConfigError.
    """
    environ = os.environ if environ is None else environ
    host = docker_host or environ.get("DOCKER_HOST")
    if not host:
        name, where = _context_name(environ)
        if name and name != "default":
            return _context_endpoint(name, where, tls, tls_verify, cert_path, environ)
        host = DEFAULT_HOST
    scheme = _parse(host)[0]
    files = _direct_tls(host, scheme, tls, tls_verify, cert_path, environ) if scheme in _TCP_SCHEMES else None
    return Endpoint(host, files)


def _ssl_context(files, host):
    import ssl

    try:
        if files.verify:
            context = ssl.create_default_context(cafile=files.ca)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if files.ca:
                context.load_verify_locations(files.ca)
        if files.cert:
            context.load_cert_chain(files.cert, files.key)
    except (OSError, ValueError) as exc:
        raise EngineConfigError("cannot load the TLS files for the Docker engine at %s (%s): %s"
                                % (host, ", ".join(f for f in (files.ca, files.cert, files.key) if f), exc))
    return context


def connection_factory(host, timeout, environ=None, ssh_command=None, tls=None, tls_verify=None, cert_path=None):
    """A function making a fresh HTTP connection to the engine at ``host``.

    ``host`` is an Endpoint, or a DOCKER_HOST URL (None: as :func:`resolve_endpoint` chooses) reached with
    the TLS settings ``tls``, ``tls_verify`` and ``cert_path``. For ssh:// hosts ``ssh_command`` is the
    argv whose stdin and stdout carry the connection (``ssh ... host docker system dial-stdio``; the
    local-docker driver builds it).
    """
    endpoint = host if isinstance(host, Endpoint) else resolve_endpoint(host, tls, tls_verify, cert_path, environ)
    host = endpoint.host
    scheme, url, port = _parse(host)
    if scheme == "unix":
        path = (url.netloc + url.path) or "/var/run/docker.sock"
        return lambda: _UnixConnection(path, timeout)
    if scheme == "ssh":
        if not ssh_command:
            raise EngineError("docker_host %s needs the ssh command that reaches it" % host)
        argv = list(ssh_command)
        return lambda: _SSHConnection(argv, timeout)
    port = port or (2376 if endpoint.tls else 2375)
    if endpoint.tls:
        context = _ssl_context(endpoint.tls, host)
        return lambda: http_client.HTTPSConnection(url.hostname, port, timeout=timeout, context=context)
    return lambda: http_client.HTTPConnection(url.hostname, port, timeout=timeout)


class DockerEngine(object):
    """One Docker engine: ``host`` is an Endpoint, or a DOCKER_HOST URL (None: as :func:`resolve_endpoint`
    chooses) reached with the TLS settings ``tls``, ``tls_verify`` and ``cert_path``.

    ``environ`` is where the docker settings are read (DOCKER_CONFIG, DOCKER_TLS_VERIFY, ...); child
    processes get the process environment less its secrets.
    """

    def __init__(self, host=None, timeout=60, environ=None, ssh_command=None, tls=None, tls_verify=None,
                 cert_path=None):
        self.environ = os.environ if environ is None else environ
        self.endpoint = host if isinstance(host, Endpoint) else resolve_endpoint(
            host, tls=tls, tls_verify=tls_verify, cert_path=cert_path, environ=self.environ)
        self.host = self.endpoint.host
        self.timeout = timeout
        self._connect = connection_factory(self.endpoint, timeout, self.environ, ssh_command)
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

    def request(self, method, path, query=None, body=None, headers=None, stream=False, versioned=True,
                limit=None):
        """(status, headers, bytes or the open response when ``stream``); raises EngineError.

        A body longer than ``limit`` bytes (JSON_LIMIT when None) is an EngineError: no more of it is read.
        """
        limit = JSON_LIMIT if limit is None else limit
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
            data, complete = self._body(response, limit)
        except (OSError, http_client.HTTPException) as exc:
            said = self._conn.diagnose() if hasattr(self._conn, "diagnose") else ""
            self.close()
            raise EngineError("cannot reach the Docker engine at %s: %s%s"
                              % (self.host, str(exc) or type(exc).__name__, " (ssh: %s)" % said if said else ""))
        except BaseException:
            # A signal cut this exchange short: the connection is mid-request, so the cleanup that
            # follows must start on a fresh one.
            self.close()
            raise
        if not complete:
            raise EngineError("the Docker engine at %s answered %s %s with more than %s; that is no answer this "
                              "client expects" % (self.host, method, path, _size(limit)))
        if response.status >= 400:
            raise self._error(response.status, data)
        return response.status, response.headers, data

    def _body(self, response, limit):
        """(the first ``limit`` bytes of ``response``'s body, whether that is all of it). The connection is
        closed when the rest is left unread or the engine ends it."""
        data = response.read(limit + 1)
        complete = len(data) <= limit
        if not complete or response.will_close:
            self.close()
        return data[:limit], complete

    @staticmethod
    def _error(status, data):
        try:
            message = json.loads(data.decode("utf-8")).get("message")
        except (ValueError, AttributeError, UnicodeDecodeError):
            message = None
        message = message or data.decode("utf-8", "replace").strip() or "HTTP %d" % status
        return (NotFound if status == 404 else EngineError)(message, status)

    def _json(self, method, path, query=None, body=None, kind=dict):
        """The answer to a request, parsed; EngineError when it is not JSON or not of type ``kind``."""
        data = self.request(method, path, query=query, body=body)[2]
        try:
            value = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            value = _NOT_JSON
        if not isinstance(value, kind):
            raise EngineError("the Docker engine at %s answered %s %s with %s, not the JSON document expected"
                              % (self.host, method, path, "something that is not JSON" if value is _NOT_JSON
                                 else "a JSON %s" % type(value).__name__))
        return value

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

    def image_pull(self, ref, on_progress=None, every=1.0):
        """Pull ``ref`` (``:latest`` when it names no tag), with the docker CLI's stored credentials.

        Returns the engine's last status line. ``on_progress(progress)`` (a :class:`PullProgress`) is
        called as the engine's per-layer progress comes, at most once every ``every`` seconds, and once
        at the end.
        """
        import time

        repository, tag, digest = split_image(ref)
        if digest:
            query = {"fromImage": "%s@%s" % (repository, digest)}
        else:
            query = {"fromImage": repository, "tag": tag or "latest"}
        headers = {}
        registry = registry_of(repository)
        auth = registry_auth(registry, self.environ)
        if auth:
            if self.endpoint.in_clear():
                raise EngineConfigError(
                    "the credentials for %s would go to an engine that was not authenticated: the Docker engine at "
                    "%s is reached over TCP without verified TLS. Reach it with docker_tls_verify and the engine's "
                    "CA certificate, or over ssh://, or pull %s on that host itself"
                    % (registry or "Docker Hub", self.host, ref))
            headers["X-Registry-Auth"] = auth
        response = self.request("POST", "/images/create", query=query, headers=headers, stream=True)[2]
        progress = PullProgress()
        told = time.monotonic()
        try:
            while True:
                line = response.readline(LINE_LIMIT + 1)
                if not line:
                    break
                if len(line) > LINE_LIMIT:
                    raise EngineError("the Docker engine at %s sent a line of pull progress longer than %s"
                                      % (self.host, _size(LINE_LIMIT)))
                if not line.strip():
                    continue
                try:
                    event = json.loads(line.decode("utf-8"))
                except (ValueError, RecursionError):
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    raise EngineError(event.get("error"))
                progress.take(event)
                if on_progress is not None and time.monotonic() - told >= every:
                    told = time.monotonic()
                    on_progress(progress)
        except (OSError, http_client.HTTPException) as exc:
            self.close()
            raise EngineError("the pull of %s was cut off: %s" % (ref, exc))
        except BaseException:
            self.close()  # the rest of the stream is unread: this connection cannot serve another request
            raise
        if response.will_close:
            self.close()
        # A stream cut between two of its chunks reads as one that ended (http.client's readline takes
        # the cut for the end): the pull is done only when the engine has the image.
        try:
            self.image_inspect(ref)
        except NotFound:
            raise EngineError("the pull of %s ended but the Docker engine at %s does not have the image (the "
                              "engine stopped or the connection to it was cut before the pull finished); run the "
                              "task again to pull it" % (ref, self.host))
        if on_progress is not None:
            on_progress(progress)
        return progress.last

    # -- containers ------------------------------------------------------------
    def container_create(self, name, config):
        ident = self._json("POST", "/containers/create", query={"name": name}, body=config).get("Id")
        if not isinstance(ident, str) or not ident:
            raise EngineError("the Docker engine at %s created container %s but gave no Id for it" % (self.host, name))
        return ident

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
                           query={"all": "1", "filters": json.dumps({"label": [label]})}, kind=(list, type(None))) or []
        documents = (self.container_inspect(item["Id"]) for item in found
                     if isinstance(item, dict) and isinstance(item.get("Id"), str))
        return [doc for doc in documents if doc is not None]

    def container_logs(self, ident, tail=40):
        """The last ``tail`` lines of stdout and stderr, interleaved as written; cut after LOG_LIMIT bytes."""
        response = self.request("GET", "/containers/%s/logs" % quote(ident),
                                query={"stdout": "1", "stderr": "1", "tail": str(tail)}, stream=True)[2]
        try:
            data, complete = self._body(response, LOG_LIMIT)
        except (OSError, http_client.HTTPException) as exc:
            self.close()
            raise EngineError("the logs of %s were cut off: %s" % (ident, exc))
        text = demux(data).decode("utf-8", "replace")
        return text if complete else text + "\n[... the rest is cut: the logs are longer than %s]\n" % _size(LOG_LIMIT)


class PullProgress(object):
    """What a pull has done so far, from the engine's ``/images/create`` progress stream.

    The engine sends one JSON object per event; those with an ``id`` that is a layer's short digest
    say what that layer does (``Pulling fs layer``, ``Waiting``, ``Downloading`` with
    ``progressDetail.current``/``total`` in bytes, ``Verifying Checksum``, ``Download complete``,
    ``Extracting``, ``Pull complete``, ``Already exists``). ``bytes_done``/``bytes_total`` count the
    compressed bytes downloaded of the layers whose size the engine told; a layer that already
    exists counts as done with no bytes.
    """

    _LAYER_EVENTS = ("Pulling fs layer", "Waiting", "Downloading", "Verifying Checksum", "Download complete",
                     "Extracting", "Pull complete", "Already exists", "Retrying")
    _DOWNLOADED = ("Verifying Checksum", "Download complete", "Extracting", "Pull complete")

    def __init__(self):
        self.layers = {}  # id -> [status, bytes done, bytes total or None]
        self.last = None

    def take(self, event):
        status = event.get("status")
        if not isinstance(status, str):
            return
        self.last = status
        ident = event.get("id")
        if not isinstance(ident, str) or not any(status.startswith(word) for word in self._LAYER_EVENTS):
            return
        layer = self.layers.setdefault(ident, [status, 0, None])
        layer[0] = status
        detail = event.get("progressDetail")
        detail = detail if isinstance(detail, dict) else {}
        current, total = detail.get("current"), detail.get("total")
        if status == "Downloading":
            if _count(total):
                layer[2] = total
            if _count(current):
                layer[1] = current
        elif status in self._DOWNLOADED and layer[2]:
            layer[1] = layer[2]

    @property
    def layers_done(self):
        return sum(1 for layer in self.layers.values() if layer[0] in ("Pull complete", "Already exists"))

    def as_dict(self):
        """``{bytes_done, bytes_total, layers_done, layers_total, status}``."""
        return {"bytes_done": sum(layer[1] for layer in self.layers.values()),
                "bytes_total": sum(layer[2] or 0 for layer in self.layers.values()),
                "layers_done": self.layers_done, "layers_total": len(self.layers),
                "status": (self.last or "")[:200]}


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 50


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


_NOT_JSON = object()


def _size(count):
    return "%d MiB" % (count >> 20) if count >= 1 << 20 else "%d bytes" % count


def _version_tuple(text):
    match = re.match(r"^(\d+)\.(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


# -- registry credentials (the docker CLI's config.json) -------------------------
def _docker_config(environ):
    path = os.path.join(_config_dir(environ), "config.json")
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
    # The helper may need its own (cloud) credentials, but never the collection's secrets.
    try:
        proc = subprocess.run(["docker-credential-%s" % helper, "get"], input=server.encode("utf-8"),  # pylint: disable=ansible-bad-function
                              capture_output=True, timeout=30, check=False, env=child_environ(by_pattern=False))
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
