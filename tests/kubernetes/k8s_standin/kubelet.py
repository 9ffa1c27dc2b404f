"""A one-node kubelet on the local Docker engine: one worker thread per Pod bound to the node.

A worker prepares the volumes, runs the init containers, then the containers (image check, env and
Secret resolution, create, start), follows them (exit codes, restarts with back-off, probes) and writes
the Pod status the way a kubelet does.  When the Pod is deleted it stops the containers within the grace
period, removes them and their volumes, and then removes the Pod object."""

import base64
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import ssl
import stat
import threading
import time
from decimal import ROUND_CEILING
from typing import Any, Dict, List, Optional, Tuple

from . import LABEL, NODE_NAME
from .cluster import CONFIGMAP, POD, PVC, SECRET, Cluster
from .controllers import EventRecorder, set_condition
from .docker import Docker, DockerError
from .model import Resource, bad_request, now, parse_quantity

LOG = logging.getLogger("k8s_standin")
SHM_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                             r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?%s(?:/%s)*(?::[\w][\w.-]{0,127})?"
                             r"(?:@sha256:[0-9a-f]{64})?$" % (_COMPONENT, _COMPONENT))


class ConfigError(Exception):
    """A container cannot be configured yet (a missing Secret, key or volume)."""


def docker_time(value: Optional[str]) -> Optional[str]:
    """Docker's nanosecond timestamps as ``metav1.Time`` (whole seconds)."""
    if not value or value.startswith("0001-"):
        return None
    return value.split(".")[0].rstrip("Z") + "Z"


def expand(text: str, env: Dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, the rest is kept."""
    def repl(match: "re.Match[str]") -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return re.sub(r"\$\$|\$\(([^)]*)\)", repl, text)


class ContainerRuntime:  # pylint: disable=too-many-instance-attributes
    """What the kubelet knows about one container of the pod."""

    def __init__(self, spec: Dict[str, Any], init: bool) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.cid: Optional[str] = None
        self.previous_cid: Optional[str] = None
        self.state: Dict[str, Any] = {"waiting": {"reason": "PodInitializing"}}
        self.last_state: Dict[str, Any] = {}
        self.restart_count = 0
        self.ready = False
        self.started = False
        self.startup_done = False
        self.image_id = ""
        self.next_attempt = 0.0
        self.pull_failures = 0
        self.failures_in_a_row = 0
        self.backoff_shown = False
        self.restart_pending = False

    @property
    def running(self) -> bool:
        """Whether the container is running."""
        return "running" in self.state

    @property
    def terminated(self) -> Optional[Dict[str, Any]]:
        """The terminated state, if the container ended and will not restart."""
        return self.state.get("terminated")

    def status(self) -> Dict[str, Any]:
        """The ``ContainerStatus``."""
        out = {"name": self.name, "state": self.state, "lastState": self.last_state, "ready": self.ready,
               "restartCount": self.restart_count, "image": self.spec.get("image", ""), "imageID": self.image_id,
               "started": self.running and self.startup_done}
        if self.cid:
            out["containerID"] = "docker://" + self.cid
        return out


class PodWorker(threading.Thread):  # pylint: disable=too-many-instance-attributes,too-many-public-methods
    """Runs one pod."""

    def __init__(self, kubelet: "Kubelet", pod: Dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name="pod-%s/%s" % (meta["namespace"], meta["name"]), daemon=True)
        self.kubelet = kubelet
        self.cluster = kubelet.cluster
        self.docker = kubelet.docker
        self.events = kubelet.events
        self.pod = pod
        self.uid, self.namespace, self.pod_name = meta["uid"], meta["namespace"], meta["name"]
        spec = pod["spec"]
        self.policy = spec.get("restartPolicy", "Always")
        self.init_containers = [ContainerRuntime(c, True) for c in spec.get("initContainers") or []]
        self.containers = [ContainerRuntime(c, False) for c in spec.get("containers") or []]
        if not self.init_containers:
            for container in self.containers:
                container.state = {"waiting": {"reason": "ContainerCreating"}}
        self.lock = threading.RLock()
        self.wake_event = threading.Event()
        self.stop_event = threading.Event()
        self.grace: Optional[int] = None
        self.discard = False  # the pod object is already gone: only clean up
        self.ip = ""
        self.start_time = now()
        self.volumes_ready = False
        self.next_volume_attempt = 0.0
        self.docker_volumes: List[str] = []
        self.shm_size: Optional[int] = None
        self.file_dir = os.path.join(kubelet.files_root, self.uid)
        self.failure: Optional[Tuple[str, str]] = None  # (reason, message) of a pod-level failure
        self.probers: List["Prober"] = []
        self.new_spec: Optional[Dict[str, Any]] = None  # a pod updated with other images, not yet acted on

    # ------------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Run a step now."""
        self.wake_event.set()

    def spec_updated(self, pod: Dict[str, Any]) -> None:
        """The pod object changed: a new container image restarts that container."""
        with self.lock:
            self.new_spec = pod
        self.wake()

    def apply_images(self) -> None:
        """Kill containers whose image changed; they start again with the new one (whatever the restart policy)."""
        with self.lock:
            pod, self.new_spec = self.new_spec, None
        if pod is None:
            return
        specs = {c["name"]: c for c in (pod["spec"].get("initContainers") or []) + (pod["spec"].get("containers") or [])}
        for container in self.init_containers + self.containers:
            wanted = specs.get(container.name)
            if wanted is None or wanted.get("image") == container.spec.get("image"):
                continue
            container.spec = wanted
            if container.running:
                self.kill(container, int(pod["spec"].get("terminationGracePeriodSeconds", 30)),
                          "Container %s definition changed, will be restarted" % container.name)
            if container.terminated is not None and not (container.init and container.terminated.get("exitCode") == 0):
                container.last_state = {"terminated": container.terminated}
                container.restart_pending = True
                container.next_attempt = 0.0
        self.pod = pod

    def request_stop(self, grace: int, discard: bool = False) -> None:
        """Stop the pod's containers within ``grace`` seconds (the shortest grace asked wins)."""
        with self.lock:
            if self.grace is None or grace < self.grace:
                self.grace = grace
            self.discard = self.discard or discard
        self.stop_event.set()
        self.wake()

    def event(self, kind: str, reason: str, message: str, container: Optional[ContainerRuntime] = None) -> None:
        """An event about the pod, from the kubelet."""
        field = None
        if container is not None:
            field = "spec.%s{%s}" % ("initContainers" if container.init else "containers", container.name)
        pod = self.cluster.store.find(POD, self.namespace, self.pod_name)
        if pod is not None and pod["metadata"]["uid"] == self.uid:
            self.events.record(pod, kind, reason, message, "kubelet", field)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self.step()
                    self.write_status()
                except (OSError, DockerError) as exc:  # the engine went away for a moment: try again
                    LOG.warning("pod %s/%s: %s", self.namespace, self.pod_name, exc)
                    time.sleep(1)
                self.wake_event.wait(0.3)
                self.wake_event.clear()
            self.teardown()
        except Exception:  # pylint: disable=broad-except
            LOG.exception("pod worker %s/%s", self.namespace, self.pod_name)
        finally:
            self.kubelet.forget(self.uid, self)

    # ------------------------------------------------------------------------------------------
    # One pass
    # ------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Advance the pod: volumes, init containers, containers, exits, restarts, deadline."""
        if self.failure:
            return
        if self.new_spec is not None:
            self.apply_images()
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline and time.time() - _epoch(self.start_time) >= deadline:
            self.failure = ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
            self.event("Normal", "DeadlineExceeded", self.failure[1])
            self.kill_all(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
            return
        if not self.volumes_ready:
            if time.monotonic() < self.next_volume_attempt:
                return
            try:
                self.prepare_volumes()
                self.volumes_ready = True
            except ConfigError as exc:
                self.next_volume_attempt = time.monotonic() + 2
                self.event("Warning", "FailedMount", str(exc))
                return
        for container in self.init_containers:
            self.follow(container)
            done = container.terminated is not None and container.terminated.get("exitCode") == 0
            if done:
                continue
            if container.terminated is not None and self.policy == "Never":
                self.failure = ("", "")
                for main in self.containers:
                    main.state = {"waiting": {"reason": "PodInitializing"}}
                return
            if not container.running:
                self.try_start(container)
            return
        for container in self.containers:
            self.follow(container)
            if container.cid is None or container.restart_pending:
                self.try_start(container)

    def follow(self, container: ContainerRuntime) -> None:
        """Notice that a running container exited."""
        if not container.running or not container.cid:
            return
        info = self.docker.inspect(container.cid)
        state = (info or {}).get("State") or {}
        if info is not None and state.get("Running"):
            return
        self.exited(container, state)

    def exited(self, container: ContainerRuntime, state: Dict[str, Any], message: Optional[str] = None,
               reason: Optional[str] = None) -> None:
        """Record a container's end and decide whether it restarts."""
        code = state.get("ExitCode", 137 if state.get("OOMKilled") else 1)
        if reason is None:
            reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        terminated = {"exitCode": code, "reason": reason,
                      "startedAt": docker_time(state.get("StartedAt")) or now(),
                      "finishedAt": docker_time(state.get("FinishedAt")) or now()}
        if container.cid:
            terminated["containerID"] = "docker://" + container.cid
        if message is None and code != 0 and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError" \
                and container.cid:
            message = self.docker.logs(container.cid, tail=80).decode(errors="replace")[-2048:]
        if message:
            terminated["message"] = message
        container.state = {"terminated": terminated}
        container.ready = False
        restart = not self.stop_event.is_set() and not self.failure and (
            self.policy == "Always" or (self.policy == "OnFailure" and code != 0))
        if container.init and self.policy != "Never":
            restart = code != 0 and not self.stop_event.is_set()
        if restart:
            container.failures_in_a_row = container.failures_in_a_row + 1 if code != 0 else 0
            delay = min(self.cluster.config.backoff_cap, 2 ** max(0, container.restart_count - 1)) if container.restart_count else 0
            container.next_attempt = time.monotonic() + delay
            container.restart_pending = True
            container.last_state = {"terminated": terminated}
            if delay:
                container.state = {"waiting": {"reason": "CrashLoopBackOff",
                                               "message": "back-off %ds restarting failed container=%s pod=%s_%s(%s)" % (
                                                   delay, container.name, self.pod_name, self.namespace, self.uid)}}
                self.event("Warning", "BackOff", "Back-off restarting failed container %s in pod %s_%s(%s)" % (
                    container.name, self.pod_name, self.namespace, self.uid), container)
        self.wake()

    # ------------------------------------------------------------------------------------------
    # Starting a container
    # ------------------------------------------------------------------------------------------
    def try_start(self, container: ContainerRuntime) -> None:  # pylint: disable=too-many-return-statements
        """Image, env, create, start; each failure is shown the way a kubelet shows it."""
        if time.monotonic() < container.next_attempt:
            waiting = container.state.get("waiting") or {}
            if waiting.get("reason") == "ErrImagePull" and not container.backoff_shown:
                self.pull_backoff(container)
            return
        image = container.spec.get("image", "")
        policy = container.spec.get("imagePullPolicy", "IfNotPresent")
        if not IMAGE_REFERENCE.match(image):
            message = 'Failed to apply default image tag "%s": couldn\'t parse image name "%s": invalid reference format' % (
                image, image)
            if (container.state.get("waiting") or {}).get("reason") != "InvalidImageName":
                self.event("Warning", "InspectFailed", message, container)
                self.event("Warning", "Failed", "Error: InvalidImageName", container)
            container.state = {"waiting": {"reason": "InvalidImageName", "message": message}}
            container.next_attempt = time.monotonic() + 5
            return
        missing = [ref.get("name", "") for ref in self.pod["spec"].get("imagePullSecrets") or []
                   if self.cluster.store.find(SECRET, self.namespace, ref.get("name", "")) is None]
        if missing and policy != "Never":
            self.event("Warning", "FailedToRetrieveImagePullSecret", "Unable to retrieve some image pull secrets (%s); "
                       "attempting to pull the image may not succeed." % ", ".join(missing))
        info = self.docker.image(image)
        if info is None:
            self.pull_failed(container, image, policy)
            return
        if container.pull_failures or container.restart_count == 0 and container.cid is None:
            if policy == "Always":
                self.event("Normal", "Pulling", 'Pulling image "%s"' % image, container)
                self.event("Normal", "Pulled", 'Successfully pulled image "%s" in 0s (0s including waiting). Image size: '
                                               '%d bytes.' % (image, info.get("Size", 0)), container)
            else:
                self.event("Normal", "Pulled", 'Container image "%s" already present on machine' % image, container)
        container.pull_failures = 0
        container.backoff_shown = False
        container.image_id = "docker-pullable://%s@%s" % (image.split(":")[0], info["Id"]) if info.get("RepoDigests") \
            else "docker://%s" % info["Id"]
        try:
            env = self.resolve_env(container.spec)
            mounts = self.container_mounts(container.spec)
        except ConfigError as exc:
            container.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            container.next_attempt = time.monotonic() + 1
            self.event("Warning", "Failed", "Error: %s" % exc, container)
            return
        attempt = container.restart_count + (1 if container.restart_pending else 0)
        name = "k8s_%s_%s_%s_%s_%d" % (container.name, self.pod_name, self.namespace, self.uid, attempt)
        try:
            if container.previous_cid:
                self.docker.remove(container.previous_cid)
            if container.cid:
                container.previous_cid = container.cid
            cid = self.docker.create(name, self.container_config(container, env, mounts))
        except DockerError as exc:
            container.state = {"waiting": {"reason": "CreateContainerError", "message": exc.message}}
            container.next_attempt = time.monotonic() + min(self.cluster.config.backoff_cap, 2 ** container.failures_in_a_row)
            container.failures_in_a_row += 1
            self.event("Warning", "Failed", "Error: %s" % exc.message, container)
            return
        if container.restart_pending:
            container.restart_count += 1
            container.restart_pending = False
        container.cid = cid
        self.event("Normal", "Created", "Created container: %s" % container.name, container)
        try:
            self.docker.start(cid)
        except DockerError as exc:
            message = "failed to create containerd task: failed to create shim task: OCI runtime create failed: %s" % exc.message
            self.event("Warning", "Failed", "Error: %s" % message, container)
            container.state = {"running": {"startedAt": now()}}
            self.exited(container, {"ExitCode": 128}, message=message, reason="StartError")
            return
        info = self.docker.inspect(cid) or {}
        started = docker_time(((info.get("State") or {}).get("StartedAt"))) or now()
        container.state = {"running": {"startedAt": started}}
        if not self.ip and not container.init:
            self.ip = ((info.get("NetworkSettings") or {}).get("IPAddress")) or ""
        self.event("Normal", "Started", "Started container %s" % container.name, container)
        container.startup_done = container.spec.get("startupProbe") is None
        container.ready = container.startup_done and container.spec.get("readinessProbe") is None and not container.init
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if container.spec.get(kind) and not container.init:
                prober = Prober(self, container, kind, cid)
                self.probers.append(prober)
                prober.start()

    def pull_failed(self, container: ContainerRuntime, image: str, policy: str) -> None:
        """No such image on the engine (and no registry to pull from)."""
        if policy == "Never":
            message = 'Container image "%s" is not present with pull policy of Never' % image
            container.state = {"waiting": {"reason": "ErrImageNeverPull", "message": message}}
            container.next_attempt = time.monotonic() + 2
            self.event("Warning", "ErrImageNeverPull", message, container)
            return
        container.pull_failures += 1
        repository = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        message = ('failed to pull and unpack image "%s": pull access denied for %s, repository does not exist or may '
                   "require 'docker login' (the stand-in has no registry: load the image into the local engine)"
                   % (image, repository))
        self.event("Normal", "Pulling", 'Pulling image "%s"' % image, container)
        self.event("Warning", "Failed", 'Failed to pull image "%s": %s' % (image, message), container)
        self.event("Warning", "Failed", "Error: ErrImagePull", container)
        container.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
        container.backoff_shown = False
        container.next_attempt = time.monotonic() + min(self.cluster.config.backoff_cap, 2 ** container.pull_failures)

    def pull_backoff(self, container: ContainerRuntime) -> None:
        """Between pull attempts: ImagePullBackOff."""
        image = container.spec.get("image", "")
        message = 'Back-off pulling image "%s"' % image
        container.state = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
        container.backoff_shown = True
        self.event("Normal", "BackOff", message, container)
        self.event("Warning", "Failed", "Error: ImagePullBackOff", container)

    def container_config(self, container: ContainerRuntime, env: Dict[str, str],
                         mounts: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The Engine API create body: command, args, env, workingDir, mounts, limits, labels."""
        spec = container.spec
        command = [expand(part, env) for part in spec.get("command") or []]
        args = [expand(part, env) for part in spec.get("args") or []]
        resources = spec.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        host: Dict[str, Any] = {"Init": True, "NetworkMode": "bridge", "Mounts": mounts,
                                "RestartPolicy": {"Name": "no"}}
        if self.shm_size:
            host["ShmSize"] = self.shm_size
        if "memory" in limits:
            host["Memory"] = int(parse_quantity(limits["memory"]))
        if "cpu" in limits:
            host["CpuPeriod"] = 100000
            host["CpuQuota"] = max(1000, int(parse_quantity(limits["cpu"]) * 100000))
        if "cpu" in requests:
            host["CpuShares"] = max(2, int(parse_quantity(requests["cpu"]) * 1024))
        aliases = ["%s:%s" % (name, alias["ip"]) for alias in self.pod["spec"].get("hostAliases") or []
                   for name in alias.get("hostnames") or []]
        if aliases:
            host["ExtraHosts"] = aliases
        security = dict(self.pod["spec"].get("securityContext") or {})
        security.update(spec.get("securityContext") or {})
        if security.get("privileged"):
            host["Privileged"] = True
        config: Dict[str, Any] = {
            "Image": spec["image"], "Hostname": self.pod_name[:63], "Env": ["%s=%s" % kv for kv in env.items()],
            "WorkingDir": spec.get("workingDir", ""), "Tty": bool(spec.get("tty")), "OpenStdin": bool(spec.get("stdin")),
            "Labels": {LABEL: self.cluster.config.state_dir, LABEL + ".namespace": self.namespace,
                       LABEL + ".pod": self.pod_name, LABEL + ".uid": self.uid, LABEL + ".container": container.name,
                       "io.kubernetes.pod.uid": self.uid, "io.kubernetes.pod.name": self.pod_name,
                       "io.kubernetes.pod.namespace": self.namespace, "io.kubernetes.container.name": container.name},
            "HostConfig": host}
        if command:
            config["Entrypoint"] = command
            config["Cmd"] = args
        elif args:
            config["Cmd"] = args
        if security.get("runAsUser") is not None:
            config["User"] = str(security["runAsUser"]) + (
                ":%s" % security["runAsGroup"] if security.get("runAsGroup") is not None else "")
        return config

    # ------------------------------------------------------------------------------------------
    # Env and volumes
    # ------------------------------------------------------------------------------------------
    def _lookup(self, res: Resource, name: str, key: Optional[str], optional: bool) -> Optional[str]:
        obj = self.cluster.store.find(res, self.namespace, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError('%s "%s" not found' % (res.kind.lower(), name))
        if key is None:
            return ""
        if res.kind == "Secret":
            raw = (obj.get("data") or {}).get(key)
            value = None if raw is None else base64.b64decode(raw).decode(errors="replace")
        else:
            value = (obj.get("data") or {}).get(key)
        if value is None and not optional:
            raise ConfigError("couldn't find key %s in %s %s/%s" % (key, res.kind, self.namespace, name))
        return value

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        match = re.match(r"^metadata\.(labels|annotations)\['(.*)'\]$", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        return {"metadata.name": self.pod_name, "metadata.namespace": self.namespace, "metadata.uid": self.uid,
                "spec.nodeName": NODE_NAME, "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
                "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1", "status.podIP": self.ip,
                "status.podIPs": self.ip}.get(path, "")

    @staticmethod
    def _resource_field(spec: Dict[str, Any], ref: Dict[str, Any]) -> str:
        part, _dot, name = ref.get("resource", "").partition(".")
        amount = (spec.get("resources") or {}).get(part, {}).get(name)
        if amount is None:
            amount = str(os.cpu_count() or 1) if name == "cpu" else "0"
        divisor = parse_quantity(ref.get("divisor") or "1")
        value = (parse_quantity(amount) / divisor).to_integral_value(rounding=ROUND_CEILING)
        return str(int(value))

    def resolve_env(self, spec: Dict[str, Any]) -> Dict[str, str]:
        """The container's environment: envFrom, then env (values, Secret and ConfigMap keys, fields)."""
        env: Dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            for field, res in (("secretRef", SECRET), ("configMapRef", CONFIGMAP)):
                ref = source.get(field)
                if not ref:
                    continue
                obj = self.cluster.store.find(res, self.namespace, ref.get("name", ""))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError('%s "%s" not found' % (res.kind.lower(), ref.get("name", "")))
                for key, raw in (obj.get("data") or {}).items():
                    value = base64.b64decode(raw).decode(errors="replace") if res.kind == "Secret" else raw
                    env[source.get("prefix", "") + key] = value
        for var in spec.get("env") or []:
            source = var.get("valueFrom")
            if source is None:
                env[var["name"]] = expand(var.get("value", ""), env)
                continue
            value: Optional[str] = None
            if source.get("secretKeyRef"):
                ref = source["secretKeyRef"]
                value = self._lookup(SECRET, ref.get("name", ""), ref["key"], bool(ref.get("optional")))
            elif source.get("configMapKeyRef"):
                ref = source["configMapKeyRef"]
                value = self._lookup(CONFIGMAP, ref.get("name", ""), ref["key"], bool(ref.get("optional")))
            elif source.get("fieldRef"):
                value = self._field(source["fieldRef"].get("fieldPath", ""))
            elif source.get("resourceFieldRef"):
                value = self._resource_field(spec, source["resourceFieldRef"])
            if value is not None:
                env[var["name"]] = value
        return env

    def prepare_volumes(self) -> None:  # pylint: disable=too-many-branches
        """Docker volumes for emptyDir, checks for hostPath and claims, files for Secret and ConfigMap volumes."""
        spec = self.pod["spec"]
        node_memory = int(parse_quantity(self.cluster.store.get(self.cluster_node(), None, NODE_NAME)["status"]
                                         ["allocatable"]["memory"]))
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            if volume.get("emptyDir") is not None:
                source = volume["emptyDir"]
                if source.get("medium") == "Memory":
                    size = int(parse_quantity(source["sizeLimit"])) if source.get("sizeLimit") else node_memory // 2
                    if any(m.get("name") == name and m.get("mountPath") == "/dev/shm"
                           for c in spec.get("containers", []) + spec.get("initContainers", [])
                           for m in c.get("volumeMounts") or []):
                        self.shm_size = size
                    continue
                volume_name = self.volume_name(name)
                if volume_name not in self.docker_volumes:
                    self.docker.create_volume(volume_name, {LABEL: self.cluster.config.state_dir,
                                                            "io.kubernetes.pod.uid": self.uid})
                    self.docker_volumes.append(volume_name)
            elif volume.get("hostPath") is not None:
                self.check_host_path(name, volume["hostPath"])
            elif volume.get("persistentVolumeClaim") is not None:
                claim = volume["persistentVolumeClaim"]["claimName"]
                pvc = self.cluster.store.find(PVC, self.namespace, claim)
                if pvc is None:
                    raise ConfigError('Unable to attach or mount volumes: unmounted volumes=[%s]: persistentvolumeclaim '
                                      '"%s" not found' % (name, claim))
                if pvc["status"].get("phase") != "Bound":
                    raise ConfigError('Unable to attach or mount volumes: unmounted volumes=[%s]: persistentvolumeclaim '
                                      '"%s" is not bound' % (name, claim))
            elif volume.get("secret") is not None or volume.get("configMap") is not None:
                self.write_files(volume)
            else:
                kind = next(iter(k for k in volume if k != "name"), "unknown")
                raise ConfigError('MountVolume.SetUp failed for volume "%s" : volume type %s is not supported by the '
                                  'stand-in' % (name, kind))

    @staticmethod
    def cluster_node() -> Resource:
        """The Node resource."""
        from .cluster import NODE  # pylint: disable=import-outside-toplevel
        return NODE

    def volume_name(self, volume: str) -> str:
        """The docker volume of an emptyDir."""
        return "k8s-standin-%s-%s" % (self.uid, volume)

    @staticmethod
    def check_host_path(name: str, source: Dict[str, Any]) -> None:
        """The hostPath ``type`` checks (and creation for the *OrCreate types)."""
        path, kind = source["path"], source.get("type", "")
        failed = 'MountVolume.SetUp failed for volume "%s" : hostPath type check failed: %s is not a %s'
        if kind in ("", "DirectoryOrCreate"):
            if not os.path.exists(path):
                os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "FileOrCreate":
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "a", encoding="utf-8"):
                    pass
        elif kind == "Directory" and not os.path.isdir(path):
            raise ConfigError(failed % (name, path, "directory"))
        elif kind == "File" and not os.path.isfile(path):
            raise ConfigError(failed % (name, path, "file"))
        elif kind == "Socket" and not (os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)):
            raise ConfigError(failed % (name, path, "socket"))

    def write_files(self, volume: Dict[str, Any]) -> None:
        """Secret and ConfigMap volumes: files on a tmpfs (never on disk), mounted read-only."""
        is_secret = volume.get("secret") is not None
        source = volume["secret"] if is_secret else volume["configMap"]
        ref = source.get("secretName") if is_secret else source.get("name")
        res = SECRET if is_secret else CONFIGMAP
        obj = self.cluster.store.find(res, self.namespace, ref or "")
        target = os.path.join(self.file_dir, volume["name"])
        if obj is None:
            if source.get("optional"):
                os.makedirs(target, mode=0o755, exist_ok=True)
                return
            raise ConfigError('MountVolume.SetUp failed for volume "%s" : %s "%s" not found' % (
                volume["name"], res.kind.lower(), ref))
        data = {k: base64.b64decode(v) if is_secret else v.encode() for k, v in (obj.get("data") or {}).items()}
        items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        os.makedirs(self.file_dir, mode=0o700, exist_ok=True)
        os.makedirs(target, mode=0o755, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise ConfigError('MountVolume.SetUp failed for volume "%s" : configmap references non-existent config '
                                  'key: %s' % (volume["name"], item["key"]))
            path = os.path.join(target, item["path"])
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, item.get("mode", source.get("defaultMode", 420)))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data[item["key"]])

    def container_mounts(self, spec: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Engine API mounts for the container's volumeMounts."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        mounts = []
        for mount in spec.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            target, sub = mount["mountPath"], mount.get("subPath", "")
            read_only = bool(mount.get("readOnly"))
            if volume.get("emptyDir") is not None and volume["emptyDir"].get("medium") == "Memory":
                if target == "/dev/shm":
                    continue
                size = volume["emptyDir"].get("sizeLimit")
                entry: Dict[str, Any] = {"Type": "tmpfs", "Target": target, "ReadOnly": read_only}
                if size:
                    entry["TmpfsOptions"] = {"SizeBytes": int(parse_quantity(size))}
                mounts.append(entry)
                continue
            if volume.get("emptyDir") is not None or volume.get("persistentVolumeClaim") is not None:
                if sub:
                    raise ConfigError("subPath %r of volume %r: subPath on emptyDir and claim volumes is not supported "
                                      "by the stand-in" % (sub, mount["name"]))
                if volume.get("emptyDir") is not None:
                    source = self.volume_name(mount["name"])
                else:
                    pvc = self.cluster.store.find(PVC, self.namespace, volume["persistentVolumeClaim"]["claimName"])
                    if pvc is None:
                        raise ConfigError('persistentvolumeclaim "%s" not found' % volume["persistentVolumeClaim"]["claimName"])
                    source = "k8s-standin-pvc-%s" % pvc["metadata"]["uid"]
                    read_only = read_only or bool(volume["persistentVolumeClaim"].get("readOnly"))
                mounts.append({"Type": "volume", "Source": source, "Target": target, "ReadOnly": read_only})
                continue
            if volume.get("hostPath") is not None:
                base = volume["hostPath"]["path"]
            else:
                base = os.path.join(self.file_dir, mount["name"])
                read_only = True
            source = os.path.join(base, sub) if sub else base
            if sub and not os.path.exists(source):
                os.makedirs(source, mode=0o755, exist_ok=True)
            mounts.append({"Type": "bind", "Source": source, "Target": target, "ReadOnly": read_only})
        return mounts

    # ------------------------------------------------------------------------------------------
    # Status
    # ------------------------------------------------------------------------------------------
    def phase(self) -> str:
        """The pod phase, computed as the kubelet's getPhase does."""
        if self.failure is not None:
            return "Failed"
        for container in self.init_containers:
            done = container.terminated is not None and container.terminated.get("exitCode") == 0
            if not done:
                return "Pending"
        waiting = running = succeeded = stopped = 0
        for container in self.containers:
            if container.running:
                running += 1
            elif container.terminated is not None and not container.restart_pending:
                stopped += 1
                succeeded += container.terminated.get("exitCode") == 0
            elif container.last_state:
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if self.policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if self.policy == "OnFailure":
            return "Running"
        return "Failed"

    def build_status(self, current: Dict[str, Any]) -> Dict[str, Any]:
        """The pod status from what the worker knows (PodScheduled and qosClass are kept)."""
        status = dict(current)
        phase = self.phase()
        status["phase"] = phase
        status["hostIP"] = "127.0.0.1"
        status["hostIPs"] = [{"ip": "127.0.0.1"}]
        status["startTime"] = self.start_time
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.failure and self.failure[0]:
            status["reason"], status["message"] = self.failure
        status["containerStatuses"] = [c.status() for c in self.containers]
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        set_condition(status, "PodReadyToStartContainers", "True" if self.volumes_ready else "False", probe_time=True)
        pending_init = [c.name for c in self.init_containers
                        if not (c.terminated is not None and c.terminated.get("exitCode") == 0)]
        if pending_init and phase not in ("Succeeded", "Failed"):
            set_condition(status, "Initialized", "False", "ContainersNotInitialized",
                          "containers with incomplete status: [%s]" % " ".join(pending_init))
        else:
            set_condition(status, "Initialized", "True")
        unready = [c.name for c in self.containers if not c.ready]
        for kind in ("Ready", "ContainersReady"):
            if phase in ("Succeeded", "Failed"):
                set_condition(status, kind, "False", "PodCompleted")
            elif unready:
                set_condition(status, kind, "False", "ContainersNotReady",
                              "containers with unready status: [%s]" % " ".join(unready))
            else:
                set_condition(status, kind, "True")
        order = {"PodReadyToStartContainers": 0, "Initialized": 1, "Ready": 2, "ContainersReady": 3, "PodScheduled": 4}
        status["conditions"] = sorted(status["conditions"], key=lambda c: order.get(c["type"], 9))
        return status

    def write_status(self) -> Optional[Dict[str, Any]]:
        """Write the pod status (a new resourceVersion only when something changed)."""
        if self.discard:
            return None
        with self.lock:
            def change(obj: Dict[str, Any]) -> Optional[bool]:
                if obj["metadata"]["uid"] != self.uid:
                    return False
                obj["status"] = self.build_status(obj.get("status") or {})
                return None

            stored = self.cluster.store.mutate(POD, self.namespace, self.pod_name, change)
        if stored is not None:
            self.pod = stored
        return stored

    # ------------------------------------------------------------------------------------------
    # Stopping
    # ------------------------------------------------------------------------------------------
    def kill(self, container: ContainerRuntime, grace: int, reason: Optional[str] = None) -> None:
        """Stop one container (SIGTERM, SIGKILL after ``grace``)."""
        if not container.running or not container.cid:
            return
        self.event("Normal", "Killing", reason or "Stopping container %s" % container.name, container)
        self.docker.stop(container.cid, grace)
        info = self.docker.inspect(container.cid) or {}
        self.exited(container, info.get("State") or {"ExitCode": 137})

    def kill_all(self, grace: int) -> None:
        """Stop every running container in parallel."""
        threads = [threading.Thread(target=self.kill, args=(c, grace), daemon=True)
                   for c in self.init_containers + self.containers if c.running]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def teardown(self) -> None:
        """Stop the containers within the grace period, remove them and the pod's volumes, then the pod."""
        grace = self.grace if self.grace is not None else 30
        if not self.discard:
            self.kill_all(grace)
            for container in self.init_containers + self.containers:
                container.restart_pending = False
                if container.cid is None:
                    container.state = {"waiting": {"reason": "ContainerCreating"}}
            self.write_status()
        else:
            for container in self.init_containers + self.containers:
                if container.running and container.cid:
                    self.docker.stop(container.cid, 0)
        self.remove_everything()
        if not self.discard:
            self.cluster.store.remove(POD, self.namespace, self.pod_name, self.uid)

    def remove_everything(self) -> None:
        """Containers, emptyDir volumes and Secret/ConfigMap files of the pod."""
        for container in self.init_containers + self.containers:
            for cid in (container.cid, container.previous_cid):
                if cid:
                    self.docker.remove(cid)
        for volume in self.docker_volumes:
            try:
                self.docker.remove_volume(volume)
            except DockerError as exc:
                LOG.warning("removing volume %s: %s", volume, exc.message)
        shutil.rmtree(self.file_dir, ignore_errors=True)


def _epoch(stamp: str) -> float:
    from .model import parse_time  # pylint: disable=import-outside-toplevel
    return parse_time(stamp).timestamp()


class Prober(threading.Thread):
    """One probe of one container: startup, readiness or liveness, every periodSeconds (capped)."""

    def __init__(self, worker: PodWorker, container: ContainerRuntime, kind: str, cid: str) -> None:
        super().__init__(name="probe-%s-%s" % (container.name, kind), daemon=True)
        self.worker = worker
        self.container = container
        self.kind = kind
        self.probe = container.spec[kind]
        self.cid = cid
        self.word = {"startupProbe": "Startup", "readinessProbe": "Readiness", "livenessProbe": "Liveness"}[kind]

    def alive(self) -> bool:
        """Whether the container this prober watches still runs."""
        return (self.container.cid == self.cid and self.container.running and not self.worker.stop_event.is_set()
                and not self.worker.failure)

    def run(self) -> None:
        cap = self.worker.cluster.config.probe_cap
        period = min(float(self.probe.get("periodSeconds", 10)), cap)
        time.sleep(min(float(self.probe.get("initialDelaySeconds", 0)), cap))
        successes = failures = 0
        while self.alive():
            if self.kind != "startupProbe" and not self.container.startup_done:
                time.sleep(0.1)
                continue
            ok, message = self.check()
            if not self.alive():
                return
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
                self.worker.event("Warning", "Unhealthy", "%s probe failed: %s" % (self.word, message), self.container)
            if self.kind == "readinessProbe":
                if ok and successes >= self.probe.get("successThreshold", 1) and not self.container.ready:
                    self.container.ready = True
                    self.worker.wake()
                elif not ok and failures >= self.probe.get("failureThreshold", 3) and self.container.ready:
                    self.container.ready = False
                    self.worker.wake()
                elif not ok and not self.container.ready:
                    pass
            elif self.kind == "startupProbe":
                if ok:
                    self.container.startup_done = True
                    self.container.ready = self.container.spec.get("readinessProbe") is None
                    self.worker.wake()
                    return
                if failures >= self.probe.get("failureThreshold", 3):
                    self.restart("Container %s failed startup probe, will be restarted" % self.container.name)
                    return
            elif not ok and failures >= self.probe.get("failureThreshold", 3):
                self.restart("Container %s failed liveness probe, will be restarted" % self.container.name)
                return
            time.sleep(period)

    def restart(self, reason: str) -> None:
        """Kill the container; the worker restarts it as the restart policy says."""
        grace = self.probe.get("terminationGracePeriodSeconds",
                               self.worker.pod["spec"].get("terminationGracePeriodSeconds", 30))
        self.worker.kill(self.container, min(int(grace), 30), reason)

    def _port(self, port: Any) -> int:
        if isinstance(port, int):
            return port
        for item in self.container.spec.get("ports") or []:
            if item.get("name") == port:
                return int(item["containerPort"])
        return 0

    def check(self) -> Tuple[bool, str]:  # pylint: disable=too-many-return-statements
        """Run the probe once: (success, failure message worded like the kubelet's)."""
        timeout = float(self.probe.get("timeoutSeconds", 1))
        host = self.worker.ip
        if self.probe.get("exec"):
            code, output = self.worker.docker.exec_run(self.cid, self.probe["exec"].get("command") or [], timeout)
            if code == -1:
                return False, "command timed out"
            return code == 0, output.decode(errors="replace").strip() or "command exited with %d" % code
        if self.probe.get("tcpSocket"):
            spec = self.probe["tcpSocket"]
            port = self._port(spec.get("port"))
            target = spec.get("host") or host
            try:
                with socket.create_connection((target, port), timeout=timeout):
                    return True, ""
            except OSError as exc:
                return False, "dial tcp %s:%d: %s" % (target, port, _reason(exc))
        if self.probe.get("httpGet"):
            return self._http(self.probe["httpGet"], host, timeout)
        return False, "grpc probes are not supported by the stand-in"

    def _http(self, spec: Dict[str, Any], host: str, timeout: float) -> Tuple[bool, str]:
        port = self._port(spec.get("port"))
        target = spec.get("host") or host
        scheme = spec.get("scheme", "HTTP").lower()
        path = spec.get("path", "/") or "/"
        url = "%s://%s:%d%s" % (scheme, target, port, path)
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                target, port, timeout=timeout, context=ssl._create_unverified_context())  # pylint: disable=protected-access
        else:
            conn = http.client.HTTPConnection(target, port, timeout=timeout)
        headers = {"User-Agent": "kube-probe/1.37", "Accept": "*/*"}
        headers.update({h["name"]: h["value"] for h in spec.get("httpHeaders") or []})
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read(10240)
        except (socket.timeout, TimeoutError):
            return False, 'Get "%s": context deadline exceeded (Client.Timeout exceeded while awaiting headers)' % url
        except OSError as exc:
            return False, 'Get "%s": dial tcp %s:%d: %s' % (url, target, port, _reason(exc))
        except http.client.HTTPException as exc:
            return False, 'Get "%s": %s' % (url, exc)
        finally:
            conn.close()
        if 200 <= response.status < 400:
            return True, ""
        return False, "HTTP probe failed with statuscode: %d" % response.status


def _reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "i/o timeout"
    return "connect: %s" % (exc.strerror or exc)


class Kubelet:
    """Starts a worker for each pod bound to the node and routes deletions and log reads to it."""

    def __init__(self, cluster: Cluster, events: EventRecorder, docker: Docker) -> None:
        self.cluster = cluster
        self.events = events
        self.docker = docker
        self.docker_version = docker.version
        self.workers: Dict[str, PodWorker] = {}
        self.files_root = os.path.join(SHM_ROOT, "k8s-standin-" + hashlib.sha256(cluster.config.state_dir.encode()).hexdigest()[:12])
        self.lock = threading.Lock()
        self.stopping = False
        cluster.store.add_listener(self._on_change)

    def _on_change(self, event: str, res: Resource, pod: Dict[str, Any]) -> None:
        if res.kind != "Pod" or self.stopping:
            return
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if event == "DELETED":
                if worker is not None:
                    worker.request_stop(0, discard=True)
                return
            if pod["spec"].get("nodeName") != NODE_NAME:
                return
            if worker is None:
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
        deletion = pod["metadata"].get("deletionTimestamp")
        if deletion:
            worker.request_stop(int(pod["metadata"].get("deletionGracePeriodSeconds", 30)))
        elif event == "MODIFIED" and [c.get("image") for c in pod["spec"].get("containers") or []] != \
                [c.spec.get("image") for c in worker.containers]:
            worker.spec_updated(pod)

    def forget(self, uid: str, worker: PodWorker) -> None:
        """A worker ended."""
        with self.lock:
            if self.workers.get(uid) is worker:
                del self.workers[uid]

    def has_worker(self, uid: str) -> bool:
        """Whether the pod has a running worker."""
        with self.lock:
            return uid in self.workers

    def log_container(self, pod: Dict[str, Any], name: Optional[str], previous: bool) -> str:
        """The docker container whose output ``pods/log`` returns (400 with the kubelet's words if none)."""
        spec = pod["spec"]
        names = [c["name"] for c in spec.get("containers") or []]
        all_names = names + [c["name"] for c in spec.get("initContainers") or []]
        pod_name = pod["metadata"]["name"]
        if not name:
            if len(names) != 1:
                raise bad_request("a container name must be specified for pod %s, choose one of: [%s]" % (
                    pod_name, " ".join(names)))
            name = names[0]
        if name not in all_names:
            raise bad_request("container %s is not valid for pod %s" % (name, pod_name))
        with self.lock:
            worker = self.workers.get(pod["metadata"]["uid"])
        runtime = None
        if worker is not None:
            runtime = next(c for c in worker.init_containers + worker.containers if c.name == name)
        if previous:
            cid = runtime.previous_cid if runtime else None
            if not cid:
                raise bad_request('previous terminated container "%s" in pod "%s" not found' % (name, pod_name))
            return cid
        if runtime is None or runtime.cid is None:
            reason = ((runtime.state.get("waiting") or {}).get("reason") if runtime else None) or "ContainerCreating"
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                reason = "trying and failing to pull image"
            raise bad_request('container "%s" in pod "%s" is waiting to start: %s' % (name, pod_name, reason))
        return runtime.cid

    def shutdown(self) -> None:
        """Stop every worker without touching the store, then remove what is left."""
        self.stopping = True
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop(0, discard=True)
        for worker in workers:
            worker.join(timeout=15)
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Every container and volume carrying this stand-in's label, and its files on tmpfs."""
        label = "%s=%s" % (LABEL, self.cluster.config.state_dir)
        for container in self.docker.containers(label):
            self.docker.remove(container["Id"])
        for volume in self.docker.volumes(label):
            try:
                self.docker.remove_volume(volume)
            except DockerError as exc:
                LOG.warning("removing volume %s: %s", volume, exc.message)
        shutil.rmtree(self.files_root, ignore_errors=True)
