"""Replica workers: each replica of a deployment is one container on the local Docker engine.

A worker schedules its replica (``NoCapacity`` when no node of its node group has the GPUs), checks the
image is there (the stand-in cannot pull: a missing image is ``ConfigError`` with ``ErrImagePull``),
resolves the environment (secret references from the workspace's secrets, in memory; a missing secret is
``ConfigError``), then runs the container with the deployment's image, command and environment, the
variables Lepton itself sets, its shared memory and mounts. The replica is ready once its port accepts
connections (what Lepton's TCP health check asks); the liveness check, after its initial delay, restarts
a container whose port stops answering. A container that exits is recorded as a termination and
restarted with back-off, as Lepton does. GPUs are accounted, never attached."""

import logging
import os
import socket
import threading
import time
from typing import Any, Dict, List

from . import LABEL
from .docker import Docker, DockerError
from .workspace import SHAPES, Deployment, Replica, Workspace, iso

LOG = logging.getLogger("lepton_standin")
PORT = 8080
STOP_GRACE = 5


def port_open(ip: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


class Runtime:
    """Starts and stops the replica workers of every deployment."""

    def __init__(self, workspace: Workspace, docker: Docker) -> None:
        self.workspace = workspace
        self.docker = docker
        self.workers: Dict[str, List["ReplicaWorker"]] = {}
        self.lock = threading.Lock()

    def start(self, deployment: Deployment) -> None:
        workers = []
        for _index in range(deployment.wanted):
            rid = "%s-%s-%s" % (deployment.name, deployment.suffix, os.urandom(3).hex()[:5])
            replica = Replica(deployment, rid)
            with self.workspace.lock:
                deployment.replicas[rid] = replica
            workers.append(ReplicaWorker(self.workspace, self.docker, replica))
        with self.lock:
            self.workers[deployment.name] = workers
        for worker in workers:
            worker.start()

    def delete(self, deployment: Deployment, on_gone: Any) -> None:
        """Stop the deployment's replicas in the background; ``on_gone()`` once every container is removed."""
        with self.workspace.lock:
            if deployment.deleting:
                return
            deployment.deleting = True
        self.workspace.event(deployment, "Normal", "Deleting", "deployment %s is being deleted" % deployment.name)
        with self.lock:
            workers = self.workers.pop(deployment.name, [])

        def finish() -> None:
            for worker in workers:
                worker.join()
            on_gone()

        threading.Thread(target=finish, name="delete-" + deployment.name, daemon=True).start()

    def shutdown(self) -> None:
        with self.lock:
            workers = [w for group in self.workers.values() for w in group]
            self.workers.clear()
        for worker in workers:
            worker.replica.deployment.deleting = True
        for worker in workers:
            worker.join(timeout=STOP_GRACE + 30)
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        for item in self.docker.containers("%s=%s" % (LABEL, self.workspace.config.state_dir)):
            self.docker.remove(item["Id"])


class ReplicaWorker(threading.Thread):
    """Runs one replica until its deployment is deleted."""

    def __init__(self, workspace: Workspace, docker: Docker, replica: Replica) -> None:
        super().__init__(name="replica-" + replica.id, daemon=True)
        self.workspace = workspace
        self.docker = docker
        self.replica = replica
        self.deployment = replica.deployment
        self.backoff = 1.0
        self.next_start = 0.0
        self.failures = 0

    # -- helpers -------------------------------------------------------------------------------
    def _event(self, kind: str, reason: str, note: str) -> None:
        self.workspace.event(self.deployment, kind, reason, note, self.replica.id)

    def _issue(self, reason: str, message: str) -> None:
        with self.workspace.lock:
            self.replica.set_issue(reason, message)
            if self.deployment.state() == "Ready":
                self.deployment.ever_ready = True

    def _back_off(self) -> None:
        self.next_start = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, self.workspace.config.backoff_cap)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.deployment.deleting and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # -- the container -------------------------------------------------------------------------
    def _environment(self) -> List[str]:
        """``NAME=value`` for the container (secret values resolved here, in memory), or ConfigError."""
        spec = self.deployment.spec
        config = self.workspace.config
        env = ["LEPTON_WORKSPACE_ID=%s" % config.workspace_id, "LEPTON_DEPLOYMENT_NAME=%s" % self.deployment.name,
               "LEPTON_RESOURCE_ACCELERATOR_TYPE=%s" % (SHAPES[self.deployment.shape][2] or "")]
        for item in spec.get("envs") or []:
            if item.get("value") is not None:
                env.append("%s=%s" % (item["name"], item["value"]))
                continue
            ref = item["value_from"]["secret_name_ref"]
            value = self.workspace.secret_value(ref)
            if value is None:
                raise LookupError("CreateContainerConfigError: secret %s (for %s) not found in workspace %s"
                                  % (ref, item["name"], config.workspace_id))
            env.append("%s=%s" % (item["name"], value))
        return env

    def _binds(self) -> List[str]:
        binds = []
        for mount in self.deployment.spec.get("mounts") or []:
            source = mount["from"]
            base = os.path.join(self.workspace.config.state_dir, "storage",
                                "node-local-" + self.replica.node["name"] if source == "node-local"
                                else source.split(":", 1)[1])
            host = os.path.normpath(os.path.join(base, (mount.get("path") or "/").lstrip("/")))
            if not host.startswith(base):
                raise LookupError("mount path %s leaves its volume" % mount.get("path"))
            os.makedirs(host, exist_ok=True)
            read_only = (mount.get("mount_options") or {}).get("read_only")
            binds.append("%s:%s%s" % (host, mount["mount_path"], ":ro" if read_only else ""))
        return binds

    def _create(self) -> None:
        spec = self.deployment.spec
        container = spec.get("container") or {}
        image = container["image"]
        if not self.docker.has_image(image):
            message = ("Back-off pulling image \"%s\": ErrImagePull: failed to pull and unpack image \"%s\": not found "
                       "(the stand-in pulls nothing: build or load the image locally)" % (image, image))
            self._event("Warning", "Failed", message)
            self._issue("ConfigError", message)
            self._back_off()
            return
        try:
            env = self._environment()
            binds = self._binds()
        except LookupError as exc:
            self._event("Warning", "Failed", str(exc))
            self._issue("ConfigError", str(exc))
            self._back_off()
            return
        command = container.get("command") or []
        requirement = spec.get("resource_requirement") or {}
        config = self.workspace.config
        host = {"Init": True, "Binds": binds or None}
        if requirement.get("shared_memory_size"):
            host["ShmSize"] = int(requirement["shared_memory_size"]) * 1024 * 1024
        body: Dict[str, Any] = {
            "Image": image, "Env": env, "Tty": False,
            "Labels": {LABEL: config.state_dir, LABEL + ".workspace": config.workspace_id,
                       LABEL + ".deployment": self.deployment.name, LABEL + ".replica": self.replica.id},
            "HostConfig": host,
        }
        if command:
            body["Entrypoint"] = command[:1]
            body["Cmd"] = command[1:]
        try:
            self.replica.cid = self.docker.run("lepton-standin-%s-%s" % (config.workspace_id, self.replica.id), body)
        except DockerError as exc:
            self._event("Warning", "Failed", "Error: failed to start container: %s" % exc.message)
            self._issue("ConfigError", "RunContainerError: %s" % exc.message)
            self._back_off()
            return
        self.replica.started_at = int(time.time())
        self.failures = 0
        self._event("Normal", "Created", "Created container main")
        self._event("Normal", "Started", "Started container main")
        self._issue("InProgress", "container started; waiting for port %d" % PORT)

    def _ended(self, info: Dict[str, Any]) -> None:
        state = info.get("State") or {}
        code = int(state.get("ExitCode") or 0)
        reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        try:
            tail = self.docker.logs(self.replica.cid or "", tail=5).decode("utf-8", "replace").strip().splitlines()
        except DockerError:
            tail = []
        record = {"started_at": self.replica.started_at or int(time.time()), "finished_at": int(time.time()),
                  "exit_code": code, "reason": reason, "message": tail[-1][:500] if tail else ""}
        with self.workspace.lock:
            self.deployment.terminations.setdefault(self.replica.id, []).append(record)
        self.docker.remove(self.replica.cid or "")
        self.replica.cid, self.replica.ip = None, ""
        self._event("Warning", "BackOff", "Back-off restarting failed container main (exit code %d, %s)" % (code, reason))
        self._issue("InProgress", "container exited with code %d (%s); restarting" % (code, reason))
        self._back_off()

    def _teardown(self) -> None:
        if self.replica.cid:
            self._event("Normal", "Killing", "Stopping container main")
            try:
                self.docker.stop(self.replica.cid, STOP_GRACE)
            finally:
                self.docker.remove(self.replica.cid)
            self.replica.cid = None
        self._issue("Deleted", "replica deleted")

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # pylint: disable=broad-except  # a worker never dies silently
            LOG.exception("replica %s failed", self.replica.id)
        finally:
            try:
                self._teardown()
            except DockerError:
                LOG.exception("replica %s: its container could not be removed", self.replica.id)

    def _loop(self) -> None:
        liveness = ((self.deployment.spec.get("health") or {}).get("liveness") or {})
        delay = float(liveness.get("initial_delay_seconds") or 0)
        while not self.deployment.deleting:
            if self.replica.node is None:
                why = self.workspace.place(self.replica)
                if why:
                    self._issue("NoCapacity", why)
                    self._event("Warning", "FailedScheduling", why)
                    self._sleep(1.0)
                    continue
                self._event("Normal", "Scheduled", "Successfully assigned %s to %s" % (self.replica.id,
                                                                                       self.replica.node["name"]))
            if self.replica.cid is None:
                if time.monotonic() < self.next_start:
                    self._sleep(min(0.2, self.next_start - time.monotonic()))
                    continue
                self._create()
                continue
            info = self.docker.inspect(self.replica.cid)
            if info is None or not (info.get("State") or {}).get("Running"):
                if info is None:
                    self.replica.cid = None
                    self._back_off()
                    continue
                self._ended(info)
                continue
            self.replica.ip = ((info.get("NetworkSettings") or {}).get("IPAddress")) or ""
            if self.replica.ip and port_open(self.replica.ip, PORT):
                self.failures = 0
                if not self.replica.ready:
                    self._issue("Ready", "")
                    self.backoff = 1.0
                self._sleep(0.5)
                continue
            self.failures += 1
            if self.replica.ready:
                self._issue("InProgress", "port %d stopped accepting connections" % PORT)
            started = self.replica.started_at or time.time()
            # Three failed checks in a row (they run every 0.1 s here) after the initial delay: restart.
            if liveness.get("tcp") and time.time() - started > delay and self.failures >= 30:
                self._event("Warning", "Unhealthy", "Liveness probe failed: dial tcp %s:%d: connection refused"
                            % (self.replica.ip, PORT))
                self._event("Normal", "Killing", "Container main failed liveness probe, will be restarted")
                self.docker.stop(self.replica.cid, STOP_GRACE)
                continue
            self._sleep(0.1)


def termination_view(deployment: Deployment) -> Dict[str, List[Dict[str, Any]]]:
    return dict((rid, list(items)) for rid, items in deployment.terminations.items())


def readiness_view(deployment: Deployment) -> Dict[str, List[Dict[str, Any]]]:
    return dict((rid, [{"reason": r.issue[0], "message": r.issue[1], "creationTimestamp": r.issue_since}])
                for rid, r in deployment.replicas.items())


__all__ = ["Runtime", "readiness_view", "termination_view", "iso"]
