# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""local-docker: the service runs as a container on a Docker engine.

The container is named after the job_id, runs ``/bin/sh -c <inner command>``
under an init (Python as PID 1 ignores SIGTERM), publishes port 8080 on
``bind_address:host_port`` and carries ``tao.inference.*`` labels so a service
can be found again even without its registry entry. Secret values travel
only in the container-create API body (the container's environment).
"""

import ipaddress

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog, pulls
from ansible_collections.tao.inference.plugins.module_utils.docker_engine import (
    DockerEngine, EngineConfigError, EngineError, UnsupportedEngine, resolve_endpoint,
)
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import (
    LABEL_PREFIX, Driver, PlatformStatus, PortTaken, mask,
)
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free
from ansible_collections.tao.inference.plugins.module_utils.spec import parse_size
from ansible_collections.tao.inference.plugins.module_utils.ssh import NO_MULTIPLEXING, SSH_OPTIONS, SSHTarget
from ansible_collections.tao.inference.plugins.module_utils.trust import check_host, check_path, check_user, is_loopback

_PORT_TAKEN = ("port is already allocated", "address already in use", "bind for")


def engine_url_problem(value):
    """Why ``value`` is no engine address this driver would use, or None."""
    scheme, sep, rest = value.partition("://") if isinstance(value, str) else ("", "", "")
    scheme = scheme.lower()
    if not sep or scheme not in ("unix", "tcp", "ssh", "http", "https"):
        return "is not a unix://, tcp:// or ssh:// URL"
    if scheme == "unix":
        check_path(rest or "/", "socket")
        return None
    url = urlsplit(value)
    if url.password is not None or (url.username and scheme != "ssh") or url.path not in ("", "/") \
            or url.query or url.fragment:
        return "is not of the form %s://[user@]host[:port]" % scheme
    check_user(url.username, "user")
    check_host(url.hostname or "", "host")
    try:
        url.port
    except ValueError:
        return "has a port that is not a number"
    return None


def _bind(spec):
    """The address the service port is published on (option bind_address)."""
    return spec.platform_options["bind_address"]


def _url_host(name):
    """``name`` as it stands in a URL (an IPv6 address in brackets)."""
    return "[%s]" % name if ":" in name else name


def _is_port_conflict(exc):
    text = str(exc).lower()
    return any(marker in text for marker in _PORT_TAKEN)


class LocalDockerDriver(Driver):
    """Driver for a local (or ``docker_host``) Docker engine."""

    name = "local-docker"
    OPTIONS = dict(
        docker_host=dict(type="str"),
        docker_tls=dict(type="bool"),
        docker_tls_verify=dict(type="bool"),
        docker_cert_path=dict(type="path"),
        pull=dict(type="str", choices=["missing", "always", "never"], default="missing"),
        bind_address=dict(type="str", default="127.0.0.1"),
        **SSH_OPTIONS
    )
    CONNECTION = {"docker_host": "docker_host", "key_path": "ssh_key_path", "ssh_config": "ssh_config"}
    FILE_CONNECTION = ("key_path", "ssh_config")
    CONNECTION_KINDS = {"docker_host": engine_url_problem, "key_path": "path", "ssh_config": "path"}
    ENTRY_FIELDS = {"docker_url": "url", "container_id": "hex"}
    EXECUTION_BACKEND = "local-docker"
    uses_host_port = True

    @classmethod
    def spec_options(cls, params, environ):
        bind_address = params.get("bind_address") or cls.OPTIONS["bind_address"]["default"]
        try:
            ipaddress.ip_address(bind_address)
        except ValueError:
            raise TaoInferenceError("bind_address %r is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every "
                                    "interface)" % (bind_address,))
        return {"bind_address": bind_address}

    @classmethod
    def from_options(cls, connection, params):
        # Checked now, so that check mode refuses what a real run would refuse.
        problem = engine_url_problem(connection["docker_host"]) if connection.get("docker_host") else None
        if problem:
            raise TaoInferenceError("docker_host %r %s" % (connection["docker_host"], problem))
        # TLS settings come from this run's options or environment, never from a registry entry.
        return cls(docker_host=connection.get("docker_host"), pull=params.get("pull") or "missing",
                   ssh_key_path=connection.get("key_path"), ssh_config=connection.get("ssh_config"),
                   tls=params.get("docker_tls"), tls_verify=params.get("docker_tls_verify"),
                   cert_path=params.get("docker_cert_path"))

    def __init__(self, docker_host=None, timeout=60, pull="missing", ssh_key_path=None, ssh_config=None,
                 engine_factory=DockerEngine, tls=None, tls_verify=None, cert_path=None, bind_address=None):
        self.docker_host = docker_host
        # Where the port is published: the spec's bind_address, unless a platform that drives this engine
        # for its own hosts (brev) says where.
        self.bind_address = bind_address
        self.timeout = timeout
        self.pull = pull
        self.ssh_key_path = ssh_key_path
        self.ssh_config = ssh_config
        # TLS towards a tcp:// engine; None falls back to DOCKER_TLS, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.
        self.tls = tls
        self.tls_verify = tls_verify
        self.cert_path = cert_path
        self._factory = engine_factory
        self._endpoint = None
        self._engine = None
        self._info_cache = None
        self._host_cache = None

    # -- connection --------------------------------------------------------
    @property
    def engine(self):
        if self._engine is None:
            endpoint = self.endpoint
            engine = None
            try:
                engine = self._factory(endpoint, timeout=self.timeout, ssh_command=self._ssh_command())
                engine.ping()
            except EngineError as exc:
                if engine is not None:
                    engine.close()
                if isinstance(exc, (UnsupportedEngine, EngineConfigError)):
                    raise TaoInferenceError(str(exc))
                if exc.status is not None:
                    raise TaoInferenceError("the Docker engine at %s refused us: %s" % (self.host, exc))
                if self.host.startswith("ssh://"):
                    hint = ("Check that `ssh %s docker info` works in batch mode (host, user, ssh_key_path, "
                            "ssh_config) and that the docker CLI is installed there" % self._ssh_target().destination)
                elif endpoint.context:
                    hint = ("The docker context %r names this engine: start Docker there, fix the context "
                            "(`docker context ls`) or set docker_host" % endpoint.context)
                else:
                    hint = ("Start Docker (or fix docker_host / DOCKER_HOST) and make sure this user may use it "
                            "(`docker info` must work)")
                raise TaoInferenceError("%s. %s" % (exc, hint))
            self._engine = engine
        return self._engine

    @property
    def endpoint(self):
        """The engine and how TLS reaches it: docker_host, else DOCKER_HOST, else the docker context in effect
        (DOCKER_CONTEXT, else the docker CLI's current context), else the local socket."""
        if self._endpoint is None:
            try:
                self._endpoint = resolve_endpoint(self.docker_host, tls=self.tls, tls_verify=self.tls_verify,
                                                  cert_path=self.cert_path)
            except EngineError as exc:
                raise TaoInferenceError(str(exc))
        return self._endpoint

    @property
    def host(self):
        """The engine's address (a DOCKER_HOST URL), as :attr:`endpoint` chooses it."""
        return self.endpoint.host

    def _ssh_target(self):
        url = urlsplit(self.host)
        try:
            port = url.port
        except ValueError:
            raise TaoInferenceError("docker_host %s has a port that is not a number; use ssh://[user@]host[:port]"
                                    % self.host)
        if not url.hostname or url.password is not None or url.path not in ("", "/"):
            raise TaoInferenceError("docker_host %s is not of the form ssh://[user@]host[:port]" % self.host)
        return SSHTarget(url.hostname, user=url.username, port=port, key_path=self.ssh_key_path,
                         config=self.ssh_config, what="docker_host's host")

    def _ssh_command(self):
        """ssh://: reach the engine with ``docker system dial-stdio``, as ssh_key_path / ssh_config say."""
        if not self.host.startswith("ssh://"):
            return None
        target = self._ssh_target()
        # -T: a byte stream, whatever the ssh configuration says of terminals (Brev's asks for one).
        return target.argv("docker", "system", "dial-stdio", extra=NO_MULTIPLEXING + ["-T"])

    def recorded_connection(self, connection):
        recorded = dict(connection)
        recorded["docker_host"] = self.host  # the engine DOCKER_HOST or a context chose, not just the option
        return recorded

    def close(self):
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def remote(self):
        """True when the engine runs on another machine (a tcp:// or ssh:// host that is not loopback)."""
        return self._host_name() != "localhost"

    def _host_name(self):
        """The name a published port is reached at from here: "localhost" for this machine's engine
        (the unix socket, or a tcp:// / ssh:// host that is loopback), else the host (an ssh alias
        resolved with ``ssh -G``)."""
        if self._host_cache is None:
            if self.host.startswith("unix://"):
                name = "localhost"
            elif self.host.startswith("ssh://"):
                name = self._ssh_target().resolved_host()
            else:
                name = urlsplit(self.host).hostname or "localhost"
            self._host_cache = "localhost" if is_loopback(name) else name
        return self._host_cache

    # -- interface ---------------------------------------------------------
    def _bind(self, spec):
        return self.bind_address or _bind(spec)

    def port_scope(self, spec):
        # Every service published on this machine shares its ports.
        return "docker:%s" % self._host_name() if self.remote else "local"

    def port_is_free(self, spec, port):
        if self.remote:
            return True  # the engine itself refuses a taken port; start() retries
        return port_is_free(port, addresses=sorted(set(["0.0.0.0", "127.0.0.1", self._bind(spec)])))

    def _info(self):
        if self._info_cache is None:
            self._info_cache = self._call(self.engine.info, "read the engine's info")
        return self._info_cache

    def _call(self, fn, what, *args):
        try:
            return fn(*args)
        except EngineError as exc:
            raise TaoInferenceError("Docker could not %s: %s" % (what, exc))

    def preflight(self, spec, report=True):
        if self.remote and self._bind(spec).startswith("127."):
            raise TaoInferenceError(
                "docker_host %s is another machine: a port bound to %s there cannot be reached from "
                "here; set bind_address to 0.0.0.0 or the host's address" % (self.host, self._bind(spec))
            )
        engine = self.engine  # reachable, or a clear error
        if spec.num_gpus <= 0 and not report:
            return {}
        info = self._info()
        runtimes = sorted(info.get("Runtimes") or {})
        if spec.num_gpus > 0 and "nvidia" not in runtimes:
            raise TaoInferenceError(
                "num_gpus=%d needs the NVIDIA container runtime, but the Docker engine on %s has none "
                "(runtimes: %s). Install nvidia-container-toolkit and run `nvidia-ctk runtime configure "
                "--runtime=docker`, or set num_gpus: 0 for a CPU-only image"
                % (spec.num_gpus, self._host_name(), ", ".join(runtimes) or "none")
            )
        if not report:
            return {}  # prepare() looks at the image next
        return {
            "engine": "Docker %s (API %s)" % (info.get("ServerVersion"), engine.api_version),
            "host": self._host_name(),
            "runtimes": runtimes,
            "image_present": self._has_image(spec.image),
        }

    def has_image(self, image):
        """Whether the engine has ``image``."""
        return self._has_image(image)

    def ensure_image(self, image):
        """Pull ``image`` as ``pull`` says (joining a pull of it under way); what the pull did."""
        return self._ensure_image(image)

    def _has_image(self, image):
        try:
            self.engine.image_inspect(image)
            return True
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise TaoInferenceError("cannot inspect image %s: %s" % (image, exc))

    def prepare(self, spec):
        """Make the image available on the engine (pull per ``self.pull``); what the pull did (see
        :func:`pulls.outcome`: ``pulled`` false when the image was there)."""
        return self._ensure_image(spec.image)

    def _ensure_image(self, image):
        if self.pull != "always" and self._has_image(image):
            return pulls.outcome(False)
        if self.pull == "never":
            raise TaoInferenceError(
                "image %s is not on the Docker host and pull is 'never'; load or build it there, "
                "or set pull: missing" % image
            )
        try:
            # Joins a pull of the same image on this engine that another run has under way.
            return pulls.pull_or_join(self.engine, image)
        except EngineError as exc:
            hint = ""
            if image.startswith("nvcr.io/"):
                hint = (" For nvcr.io images run `docker login nvcr.io` (user '$oauthtoken', password: your NGC "
                        "API key) as the user that runs this module: the credentials it stores are sent to the engine.")
            raise TaoInferenceError("cannot pull image %s: %s.%s" % (image, exc, hint))

    def _gpu_options(self, spec, env):
        if spec.num_gpus <= 0:
            return {}
        if "tegra" in (self._info().get("KernelVersion") or "").lower():
            # Jetson: the nvidia runtime with visible devices by index.
            env.setdefault("NVIDIA_DRIVER_CAPABILITIES", "all")
            env.setdefault("NVIDIA_VISIBLE_DEVICES", ",".join(str(i) for i in range(spec.num_gpus)))
            return {"Runtime": "nvidia"}
        return {"DeviceRequests": [{"Driver": "", "Count": spec.num_gpus, "DeviceIDs": None,
                                    "Capabilities": [["gpu"]], "Options": {}}]}

    def container_config(self, launch):
        """The container-create body of ``launch`` (secret values only in its Env)."""
        spec = launch.spec
        env = dict(launch.env)
        host_config = {
            "Init": True,
            "ShmSize": parse_size(spec.shm_size),
            "PortBindings": {"%d/tcp" % catalog.CONTAINER_PORT: [
                # No host port: the engine picks a free one (see published_port).
                {"HostIp": self._bind(spec), "HostPort": str(launch.host_port) if launch.host_port else ""}]},
        }
        if spec.volumes:
            host_config["Binds"] = list(spec.volumes)
        host_config.update(self._gpu_options(spec, env))
        env.update(launch.secret_env)
        return {
            "Image": spec.image,
            "Cmd": ["/bin/sh", "-c", launch.command],
            "Env": ["%s=%s" % item for item in sorted(env.items())],
            "Labels": dict(launch.labels),
            "ExposedPorts": {"%d/tcp" % catalog.CONTAINER_PORT: {}},
            "HostConfig": host_config,
        }

    def start(self, launch):
        config = self.container_config(launch)
        try:
            ident = self.engine.container_create(launch.job_id, config)
        except EngineError as exc:
            raise TaoInferenceError(
                "Docker refused to create the container: %s" % mask(str(exc), launch.secret_env)
            ) from None
        try:
            self.engine.container_start(ident)
        except EngineError as exc:
            try:
                self.engine.container_remove(ident)
            except EngineError:
                pass  # the container is also labelled: absent by name or info finds it again
            if _is_port_conflict(exc):
                raise PortTaken(launch.host_port) from None
            raise TaoInferenceError(
                "Docker could not start the container: %s" % mask(str(exc), launch.secret_env)
            ) from None
        port = launch.host_port or self.published_port(ident)
        return {
            "host_url": "http://%s:%d" % (_url_host(self._host_name()), port),
            "docker_url": "http://%s:%d" % (launch.job_id, catalog.CONTAINER_PORT),
            "host_port": launch.host_port,
            "container_id": ident[:12],
        }

    def published_port(self, job_id):
        """The host port the engine published the service's port on (it chose it when none was asked)."""
        document = self._call(self.engine.container_inspect, "inspect container %s" % job_id, job_id) or {}
        bindings = ((document.get("NetworkSettings") or {}).get("Ports") or {}).get(
            "%d/tcp" % catalog.CONTAINER_PORT) or []
        for binding in bindings:
            port = str(binding.get("HostPort") or "")
            if port.isdigit() and 0 < int(port) < 65536:
                return int(port)
        raise TaoInferenceError("container %s publishes no port for %d" % (job_id, catalog.CONTAINER_PORT))

    def _inspect(self, entry):
        return self._call(self.engine.container_inspect, "inspect container %s" % entry["job_id"], entry["job_id"])

    def status(self, entry):
        document = self._inspect(entry)
        if document is None or not self._ours(document, entry["job_id"]):
            return PlatformStatus(PlatformStatus.MISSING, "no container of tao.inference named %s" % entry["job_id"])
        return self._status_of(document)

    @staticmethod
    def _status_of(document):
        state = document.get("State") or {}
        docker_state = state.get("Status") or "unknown"
        if docker_state == "running":
            mapped = PlatformStatus.RUNNING
        elif docker_state in ("created", "restarting"):
            mapped = PlatformStatus.PENDING
        else:
            mapped = PlatformStatus.EXITED
        detail = "container %s" % docker_state
        if mapped == PlatformStatus.EXITED:
            detail += " (exit code %s)" % state.get("ExitCode")
        labels = (document.get("Config") or {}).get("Labels") or {}
        return PlatformStatus(mapped, detail, state.get("ExitCode"), labels, (document.get("Name") or "").lstrip("/"))

    def logs(self, entry, lines=40, secrets=None):
        try:
            text = self.engine.container_logs(entry["job_id"], tail=lines)
        except EngineError:
            return ""
        return mask(text, secrets)

    def stop(self, entry):
        """Remove the container of ``entry``: only one that carries our labels for this job_id,
        removed by its full id (a name or id prefix could match a container we never made)."""
        document = self._inspect(entry)
        if document is None or not self._ours(document, entry["job_id"]):
            return False
        return self._call(self.engine.container_remove, "remove container %s" % entry["job_id"], document["Id"])

    @staticmethod
    def _ours(document, job_id):
        labels = (document.get("Config") or {}).get("Labels") or {}
        return labels.get(LABEL_PREFIX + "managed-by") == "tao.inference" and \
            labels.get(LABEL_PREFIX + "job_id") == job_id and isinstance(document.get("Id"), str)

    def find(self, name=None):
        label = LABEL_PREFIX + ("name=%s" % name if name else "job_id")
        found = self._call(self.engine.container_list, "list containers", label)
        return [self._status_of(document) for document in found]
