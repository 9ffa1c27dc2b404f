"""One workspace's state, in memory: deployments and their replicas, user secrets, image pull secrets, the
dedicated node group with its nodes, resource shapes, the quota, and each deployment's events.

Admission (what a create is refused for) happens here: a name taken (409), a reference to something the
workspace lacks (400), a shape that needs a dedicated node group, the quota (403). Scheduling too: a
replica gets a node of its node group with enough free GPUs, or waits as ``NoCapacity``."""

import copy
import datetime
import hashlib
import logging
import secrets as random
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from .spec import ApiError, WORKSPACE_TOKEN_REF, invalid

LOG = logging.getLogger("lepton_standin")

# name: (cpu, memory MiB, accelerator type, accelerators). CPU shapes also run outside node groups.
SHAPES: Dict[str, Tuple[float, int, Optional[str], int]] = {
    "cpu.small": (1.0, 4096, None, 0),
    "cpu.medium": (2.0, 8192, None, 0),
    "cpu.large": (4.0, 16384, None, 0),
    "gpu.1xh100-sxm": (12.0, 131072, "H100-SXM", 1),
    "gpu.2xh100-sxm": (24.0, 262144, "H100-SXM", 2),
    "gpu.4xh100-sxm": (48.0, 524288, "H100-SXM", 4),
    "gpu.8xh100-sxm": (96.0, 1048576, "H100-SXM", 8),
}
SHARED_NODE = {"id": "shared-cpu-0", "name": "lepton-shared-cpu-0", "ng": None, "gpus": 0}
USER = "tao-test-user"
TERMINAL_ISSUES = ("NoCapacity", "ConfigError", "SystemError")


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(seconds: Optional[float] = None) -> str:
    moment = datetime.datetime.fromtimestamp(time.time() if seconds is None else seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Config:
    """The stand-in's settings."""

    def __init__(self, state_dir: str, port: int, workspace_id: str, token: str, viewer_token: str, gpus: int,
                 nodes: int, quota_gpus: int, node_group: str, backoff_cap: float) -> None:
        self.state_dir = state_dir
        self.address = "127.0.0.1"
        self.port = port
        self.workspace_id = workspace_id
        self.token = token
        self.viewer_token = viewer_token
        self.gpus = gpus
        self.nodes = nodes
        self.quota = {"cpu": 512.0, "memory": 4 * 1048576, "accelerator_num": float(quota_gpus)}
        self.node_group = node_group
        self.backoff_cap = backoff_cap


class Replica:
    """One replica of a deployment: where it runs and what its container is doing."""

    def __init__(self, deployment: "Deployment", rid: str) -> None:
        self.deployment = deployment
        self.id = rid
        self.created_at = now_ms()
        self.node: Optional[Dict[str, Any]] = None
        self.cid: Optional[str] = None
        self.ip = ""
        self.ready = False
        self.issue = ("InProgress", "replica is being scheduled")
        self.issue_since = iso()
        self.started_at: Optional[int] = None

    def set_issue(self, reason: str, message: str) -> None:
        if (reason, message) != self.issue:
            self.issue = (reason, message)
            self.issue_since = iso()
            self.ready = reason == "Ready"

    def as_dict(self) -> Dict[str, Any]:
        status: Dict[str, Any] = {}
        if self.node:
            status["node"] = {"name": self.node["name"], "id": self.node["id"]}
        return {"metadata": {"id": self.id, "name": self.id, "created_at": self.created_at, "owner": USER},
                "id": self.id, "status": status}


class Deployment:
    """A deployment as the workspace keeps it: the body it was created with, its replicas, events and
    terminations, and its external endpoint."""

    def __init__(self, body: Dict[str, Any], shape: str, node_groups: List[str], wanted: int) -> None:
        self.body = copy.deepcopy(body)
        self.name = body["metadata"].get("name") or body["metadata"]["id"]
        self.spec = self.body["spec"]
        self.shape = shape
        self.node_groups = node_groups
        self.wanted = wanted
        self.created_at = now_ms()
        self.deleting = False
        self.ever_ready = False
        self.replicas: Dict[str, Replica] = {}
        self.events: List[Dict[str, Any]] = []
        self.terminations: Dict[str, List[Dict[str, Any]]] = {}
        self.endpoint = ""
        self.suffix = random.token_hex(5)

    @property
    def needs(self) -> Tuple[float, int, int]:
        cpu, memory, _kind, gpus = SHAPES[self.shape]
        return cpu * self.wanted, memory * self.wanted, gpus * self.wanted

    def state(self) -> str:
        if self.deleting:
            return "Deleting"
        ready = sum(1 for r in self.replicas.values() if r.ready)
        if self.wanted and ready >= self.wanted:
            return "Ready"
        return "Not Ready" if self.ever_ready else "Starting"

    def tokens(self, workspace_token: str) -> List[str]:
        """The bearer tokens the endpoint takes ([] when it takes none)."""
        found = []
        for token in self.spec.get("api_tokens") or []:
            if token.get("value"):
                found.append(token["value"])
            elif (token.get("value_from") or {}).get("token_name_ref") == WORKSPACE_TOKEN_REF:
                found.append(workspace_token)
        return found

    def as_dict(self, workspace_id: str) -> Dict[str, Any]:
        """The deployment as GET answers it: literal API tokens redacted, as the API does."""
        spec = copy.deepcopy(self.spec)
        for token in spec.get("api_tokens") or []:
            if token.get("value"):
                token["value"] = "***"
        metadata = dict(self.body["metadata"], id=self.name, name=self.name, created_at=self.created_at, version=1,
                        created_by=USER, owner=USER, last_modified_at=self.created_at)
        ready = sum(1 for r in self.replicas.values() if r.ready)
        return {"metadata": metadata, "spec": spec,
                "status": {"state": self.state(),
                           "endpoint": {"internal_endpoint": "http://%s.%s.svc.cluster.local:8080"
                                                             % (self.name, workspace_id),
                                        "external_endpoint": self.endpoint},
                           "autoscaler_status": {"desired_replicas": self.wanted},
                           "ready_replicas": ready}}


class Workspace:
    """Everything the workspace holds; one lock around it (Docker calls happen outside it)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.deployments: Dict[str, Deployment] = {}
        self.secrets: Dict[str, Dict[str, Any]] = {}
        self.pull_secrets: Dict[str, Dict[str, Any]] = {}
        self.journal: Deque[Dict[str, Any]] = deque(maxlen=5000)
        digest = hashlib.sha256(("%s/%s" % (config.workspace_id, config.node_group)).encode()).hexdigest()
        self.node_group = {"id": "ng-" + digest[:10], "name": config.node_group}
        self.nodes = [{"id": "node-%s-%d" % (digest[10:16], i), "name": "%s-node-%d" % (config.node_group, i),
                       "ng": self.node_group["id"], "gpus": config.gpus} for i in range(config.nodes)]

    # -- reading -------------------------------------------------------------------------
    def deployment(self, name: str) -> Deployment:
        found = self.deployments.get(name)
        if found is None:
            raise ApiError(404, "DeploymentNotFound", "deployment %s not found in workspace %s"
                           % (name, self.config.workspace_id))
        return found

    def used(self) -> Dict[str, float]:
        cpu = memory = gpus = 0.0
        for item in self.deployments.values():
            c, m, g = item.needs
            cpu, memory, gpus = cpu + c, memory + m, gpus + g
        return {"cpu": cpu, "memory": int(memory), "accelerator_num": gpus}

    def info(self) -> Dict[str, Any]:
        """``GET /workspace``."""
        with self.lock:
            used = self.used()
            return {"build_time": "2026-01-01T00:00:00Z", "git_commit": "0.47.1", "workspace_name": self.config.workspace_id,
                    "workspace_tier": "enterprise", "workspace_state": "normal",
                    "supported_shapes": dict((name, {"cpu": cpu, "memory": memory, "accelerator_type": kind,
                                                     "accelerator_num": float(gpus), "description": name})
                                             for name, (cpu, memory, kind, gpus) in SHAPES.items()),
                    "workspace_disk_usage_bytes": 0,
                    "workloads": {"num_deployments": len(self.deployments), "num_jobs": 0, "num_pods": 0,
                                  "num_secrets": len(self.secrets), "num_image_pull_secrets": len(self.pull_secrets)},
                    "resource_quota": {"limit": dict(self.config.quota), "used": used},
                    "dedicated_node_group_only": False,
                    "features": {"enable_new_deployment_api": False, "enable_secure_endpoint_defaults": False}}

    def node_group_dict(self) -> Dict[str, Any]:
        ready = len(self.nodes)
        return {"metadata": {"id": self.node_group["id"], "name": self.node_group["name"], "created_at": 0},
                "spec": {"workspaces": [self.config.workspace_id], "gpu_product": "NVIDIA-H100-80GB-HBM3",
                         "desired_nodes": ready,
                         "volumes": [{"from": "nfs", "name": "tao-shared-fs", "size_in_gb": 1024,
                                      "default_mount_path": "/shared"}]},
                "status": {"ready_nodes": ready, "quota_enabled": True}}

    def allocated(self, node_id: str) -> int:
        return sum(SHAPES[d.shape][3] for d in self.deployments.values() for r in d.replicas.values()
                   if r.node and r.node["id"] == node_id)

    def node_dicts(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [{"metadata": {"id": n["id"], "name": n["name"]},
                     "spec": {"dedicated_node_group": self.node_group["id"], "unschedulable": False,
                              "resource": {"gpu": {"product": "NVIDIA-H100-80GB-HBM3", "total": float(n["gpus"]),
                                                   "allocated": float(self.allocated(n["id"]))}}},
                     "status": {"status": ["Ready"]}} for n in self.nodes]

    def shapes(self, node_group: Optional[str]) -> List[Dict[str, Any]]:
        """``GET /shapes``: CPU shapes in the shared pool, and every shape in the dedicated node group."""
        found = []
        for name, (cpu, memory, kind, gpus) in SHAPES.items():
            spec = {"name": name, "cpu": cpu, "memory_in_mb": memory, "accelerator_type": kind,
                    "accelerator_num": float(gpus), "listable_in": ["deployment", "pod", "job"]}
            if not gpus and node_group is None:
                found.append({"metadata": {"id": name, "name": name}, "spec": dict(spec)})
            if node_group in (None, self.node_group["id"], self.node_group["name"]):
                found.append({"metadata": {"id": "%s@%s" % (name, self.node_group["id"]), "name": name},
                              "spec": dict(spec, node_group_id=self.node_group["id"])})
        return found

    # -- events ----------------------------------------------------------------------------
    def event(self, deployment: Deployment, kind: str, reason: str, note: str, replica: Optional[str] = None) -> None:
        """Record an event about a deployment (or one of its replicas); repeats are counted."""
        regarding = {"kind": "Replica" if replica else "LeptonDeployment", "name": replica or deployment.name,
                     "namespace": self.config.workspace_id}
        with self.lock:
            last = deployment.events[-1] if deployment.events else None
            if last and (last["type"], last["reason"], last["note"], last["regarding"]) == (kind, reason, note, regarding):
                last["count"] += 1
                last["last_observed_time"] = iso()
                return
            deployment.events.append({"type": kind, "reason": reason, "regarding": regarding, "count": 1,
                                      "last_observed_time": iso(), "note": note})
            del deployment.events[:-200]

    # -- admission -----------------------------------------------------------------------------
    def admit(self, body: Dict[str, Any]) -> Deployment:
        """Take a validated deployment create body: a 400, 409 or 403, or the new deployment (not running yet)."""
        spec = body["spec"]
        name = body["metadata"].get("name") or body["metadata"]["id"]
        requirement = spec.get("resource_requirement") or {}
        shape = (requirement.get("resource_shape") or "cpu.small").lower()
        if shape not in SHAPES:
            raise invalid("resource shape %s is not available in workspace %s; shapes: %s"
                          % (shape, self.config.workspace_id, ", ".join(SHAPES)))
        affinity = requirement.get("affinity") or {}
        groups = list(affinity.get("allowed_dedicated_node_groups") or [])
        for group in groups:
            if group != self.node_group["id"]:
                raise invalid("dedicated node group %s does not exist in workspace %s (node groups: %s (%s))"
                              % (group, self.config.workspace_id, self.node_group["name"], self.node_group["id"]))
        if SHAPES[shape][3] and not groups:
            raise invalid("resource shape %s is offered only in dedicated node groups; choose one (%s)"
                          % (shape, self.node_group["name"]))
        for secret in spec.get("image_pull_secrets") or []:
            if secret not in self.pull_secrets:
                raise invalid("image pull secret %s does not exist in workspace %s" % (secret, self.config.workspace_id))
        for index, mount in enumerate(spec.get("mounts") or []):
            source = mount["from"]
            shared = bool(groups) and source == "node-nfs:tao-shared-fs"
            if source != "node-local" and not shared:
                raise invalid("spec.mounts[%d].from %r: the volumes here are node-local and, in node group %s, "
                              "node-nfs:tao-shared-fs" % (index, source, self.node_group["name"]))
        wanted = requirement.get("min_replicas")
        wanted = 1 if wanted is None else wanted
        deployment = Deployment(body, shape, groups, wanted)
        with self.lock:
            if name in self.deployments:
                raise ApiError(409, "DeploymentAlreadyExists", "deployment %s already exists in workspace %s%s"
                               % (name, self.config.workspace_id,
                                  " (it is being deleted)" if self.deployments[name].deleting else ""))
            used, limit = self.used(), self.config.quota
            cpu, memory, gpus = deployment.needs
            for key, need in (("cpu", cpu), ("memory", memory), ("accelerator_num", gpus)):
                if need and used[key] + need > limit[key]:
                    raise ApiError(403, "QuotaExceeded", "workspace %s quota exceeded: %s needs %s %s, %s of %s are in "
                                   "use" % (self.config.workspace_id, name, need, key, used[key], limit[key]))
            self.deployments[name] = deployment
        return deployment

    def place(self, replica: Replica) -> Optional[str]:
        """Give ``replica`` a node; None when it got one, else why not (a scheduler's message)."""
        deployment = replica.deployment
        need = SHAPES[deployment.shape][3]
        with self.lock:
            if not deployment.node_groups:
                replica.node = SHARED_NODE
                return None
            free = []
            for node in self.nodes:
                left = node["gpus"] - self.allocated(node["id"])
                free.append(left)
                if left >= need:
                    replica.node = node
                    return None
            return ("0/%d nodes in dedicated node group %s are available: %d Insufficient nvidia.com/gpu (the "
                    "replica needs %d, the most free on a node is %d)"
                    % (len(self.nodes), self.node_group["name"], len(self.nodes), need, max(free or [0])))

    # -- secrets ---------------------------------------------------------------------------------
    def add_secrets(self, items: List[Dict[str, Any]]) -> None:
        with self.lock:
            taken = [item["name"] for item in items if item["name"] in self.secrets]
            if taken:
                raise ApiError(409, "SecretAlreadyExists", "secret %s already exists in workspace %s"
                               % (", ".join(taken), self.config.workspace_id))
            for item in items:
                self.secrets[item["name"]] = {"name": item["name"], "value": item["value"], "tags": item.get("tags"),
                                              "visibility": item.get("visibility") or "public", "owner": USER}

    def secret_list(self) -> List[Dict[str, Any]]:
        """The secrets as the API lists them: never a value."""
        with self.lock:
            return [dict((k, v) for k, v in item.items() if k != "value" and v is not None)
                    for item in sorted(self.secrets.values(), key=lambda s: s["name"])]

    def secret_value(self, name: str) -> Optional[str]:
        with self.lock:
            item = self.secrets.get(name)
            return item["value"] if item else None

    def drop_secret(self, name: str) -> None:
        with self.lock:
            if self.secrets.pop(name, None) is None:
                raise ApiError(404, "SecretNotFound", "secret %s not found in workspace %s"
                               % (name, self.config.workspace_id))
