# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""local-docker: the service runs as a container on a Docker engine.

The container is named after the job_id, runs ``/bin/sh -c <inner command>``
under an init (Python as PID 1 ignores SIGTERM), publishes port 8080 on
``bind_address:host_port`` and carries ``tao.inference.*`` labels so a service
can be found again even without its registry entry. Secret values travel
only in the container-create API body (the container's environment).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import (
    LABEL_PREFIX, Driver, PlatformStatus, PortTaken, mask,
)
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free

try:
    import docker
    from docker import errors as docker_errors
    from docker.types import DeviceRequest
    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError:  # reported by the module with missing_required_lib
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = traceback.format_exc()

_PORT_TAKEN = ("port is already allocated", "address already in use", "bind for")


def _is_port_conflict(exc):
    text = str(exc).lower()
    return any(marker in text for marker in _PORT_TAKEN)


class LocalDockerDriver(Driver):
    """Driver for a local (or ``docker_host``) Docker engine."""

    name = "local-docker"
    needs_host_port = True

    def __init__(self, docker_host=None, timeout=60, pull="missing"):
        self.docker_host = docker_host
        self.timeout = timeout
        self.pull = pull
        self._client = None

    # -- connection --------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            try:
                if self.docker_host:
                    self._client = docker.DockerClient(
                        base_url=self.docker_host, timeout=self.timeout,
                        use_ssh_client=self.docker_host.startswith("ssh://"),
                    )
                else:
                    self._client = docker.from_env(timeout=self.timeout)
                self._client.ping()
            except docker_errors.DockerException as exc:
                self._client = None
                raise TaoInferenceError(
                    "cannot reach the Docker engine at %s: %s. Start Docker (or fix docker_host / "
                    "DOCKER_HOST) and make sure this user may use it (`docker info` must work)"
                    % (self.docker_host or "the default socket", exc)
                )
        return self._client

    @property
    def remote(self):
        return bool(self.docker_host) and not self.docker_host.startswith("unix://")

    def _host_name(self):
        if not self.remote:
            return "localhost"
        return urlsplit(self.docker_host).hostname or "localhost"

    # -- interface ---------------------------------------------------------
    def port_scope(self, spec):
        # Every service published on this machine shares its ports.
        return "docker:%s" % self._host_name() if self.remote else "local"

    def port_is_free(self, spec, port):
        if self.remote:
            return True  # the engine itself refuses a taken port; start() retries
        return port_is_free(port, addresses=sorted(set(["0.0.0.0", "127.0.0.1", spec.bind_address])))

    def preflight(self, spec):
        if self.remote and spec.bind_address.startswith("127."):
            raise TaoInferenceError(
                "docker_host %s is another machine: a port bound to %s there cannot be reached from "
                "here; set bind_address to 0.0.0.0 or the host's address" % (self.docker_host, spec.bind_address)
            )
        info = self.client.info()
        if spec.num_gpus > 0 and "nvidia" not in (info.get("Runtimes") or {}):
            raise TaoInferenceError(
                "num_gpus=%d needs the NVIDIA container runtime, but the Docker engine on %s has none "
                "(runtimes: %s). Install nvidia-container-toolkit and run `nvidia-ctk runtime configure "
                "--runtime=docker`, or set num_gpus: 0 for a CPU-only image"
                % (spec.num_gpus, self._host_name(), ", ".join(sorted(info.get("Runtimes") or {})) or "none")
            )
        return {
            "engine": "Docker %s (API %s)" % (info.get("ServerVersion"), self.client.api.api_version),
            "host": self._host_name(),
            "runtimes": sorted(info.get("Runtimes") or {}),
            "image_present": self._has_image(spec.image),
        }

    def _has_image(self, image):
        try:
            self.client.images.get(image)
            return True
        except docker_errors.ImageNotFound:
            return False

    def prepare(self, spec):
        """Make the image available on the engine (pull per ``self.pull``)."""
        self._ensure_image(spec.image)

    def _ensure_image(self, image):
        if self.pull != "always":
            try:
                self.client.images.get(image)
                return
            except docker_errors.ImageNotFound:
                if self.pull == "never":
                    raise TaoInferenceError(
                        "image %s is not on the Docker host and pull is 'never'; load or build it there, "
                        "or set pull: missing" % image
                    )
            except docker_errors.APIError as exc:
                raise TaoInferenceError("cannot inspect image %s: %s" % (image, exc.explanation or exc))
        try:
            self.client.images.pull(image)
        except docker_errors.DockerException as exc:
            hint = ""
            if image.startswith("nvcr.io/"):
                hint = (" For nvcr.io images log the Docker host in first: `docker login nvcr.io` with user "
                        "'$oauthtoken' and your NGC API key as the password.")
            raise TaoInferenceError("cannot pull image %s: %s.%s" % (image, exc, hint))

    def _gpu_options(self, spec, env):
        if spec.num_gpus <= 0:
            return {}
        info = self.client.info()
        if "tegra" in (info.get("KernelVersion") or "").lower():
            # Jetson: the nvidia runtime with visible devices by index.
            env.setdefault("NVIDIA_DRIVER_CAPABILITIES", "all")
            env.setdefault("NVIDIA_VISIBLE_DEVICES", ",".join(str(i) for i in range(spec.num_gpus)))
            return {"runtime": "nvidia"}
        return {"device_requests": [DeviceRequest(count=spec.num_gpus, capabilities=[["gpu"]])]}

    def start(self, launch):
        spec = launch.spec
        env = dict(launch.env)
        options = self._gpu_options(spec, env)
        env.update(launch.secret_env)
        try:
            container = self.client.containers.create(
                spec.image,
                command=["/bin/sh", "-c", launch.command],
                name=launch.job_id,
                environment=env,
                labels=launch.labels,
                ports={"%d/tcp" % catalog.CONTAINER_PORT: (spec.bind_address, launch.host_port)},
                init=True,
                shm_size=spec.shm_size,
                volumes=list(spec.volumes) or None,
                detach=True,
                **options
            )
        except docker_errors.DockerException as exc:
            raise TaoInferenceError(
                "Docker refused to create the container: %s" % mask(str(exc), launch.secret_env)
            )
        try:
            container.start()
        except docker_errors.DockerException as exc:
            self._remove(container)
            if _is_port_conflict(exc):
                raise PortTaken(launch.host_port)
            raise TaoInferenceError(
                "Docker could not start the container: %s" % mask(str(exc), launch.secret_env)
            )
        host = self._host_name()
        return {
            "host_url": "http://%s:%d" % (host, launch.host_port),
            "docker_url": "http://%s:%d" % (launch.job_id, catalog.CONTAINER_PORT),
            "host_port": launch.host_port,
            "container_id": container.id[:12],
        }

    def _get(self, entry):
        try:
            return self.client.containers.get(entry["job_id"])
        except docker_errors.NotFound:
            return None

    def status(self, entry):
        container = self._get(entry)
        if container is None:
            return PlatformStatus(PlatformStatus.MISSING, "no container named %s" % entry["job_id"])
        return self._status_of(container)

    @staticmethod
    def _status_of(container):
        state = container.attrs.get("State") or {}
        docker_state = state.get("Status") or container.status
        if docker_state == "running":
            mapped = PlatformStatus.RUNNING
        elif docker_state in ("created", "restarting"):
            mapped = PlatformStatus.PENDING
        else:
            mapped = PlatformStatus.EXITED
        detail = "container %s" % docker_state
        if mapped == PlatformStatus.EXITED:
            detail += " (exit code %s)" % state.get("ExitCode")
        return PlatformStatus(mapped, detail, state.get("ExitCode"), container.labels, container.name)

    def logs(self, entry, lines=40, secrets=None):
        container = self._get(entry)
        if container is None:
            return ""
        try:
            text = container.logs(tail=lines).decode("utf-8", "replace")
        except docker_errors.DockerException:
            return ""
        return mask(text, secrets)

    @staticmethod
    def _remove(container):
        try:
            container.remove(force=True)
        except docker_errors.NotFound:
            return False
        return True

    def stop(self, entry):
        container = self._get(entry)
        if container is None:
            return False
        return self._remove(container)

    def find(self, name=None):
        label = LABEL_PREFIX + ("name=%s" % name if name else "job_id")
        found = self.client.containers.list(all=True, filters={"label": label})
        return [self._status_of(c) for c in found]
