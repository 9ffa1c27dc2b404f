"""What each write does, as a real API server does it: defaulting, validation, admission, allocation of
cluster IPs and node ports, resource-version preconditions, and the deletion semantics (graceful Pod
deletion, finalizers, the Orphan/Background/Foreground propagation policies, Namespace termination)."""

import base64
import copy
import ipaddress
import json
import logging
import os
import platform
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from . import NODE_NAME, VERSION
from .model import (ApiError, Resource, already_exists, bad_request, conflict, forbidden, invalid, new_uid, now,
                    random_suffix, resource)
from .store import Store, json_patch, merge_patch, strategic_merge_patch
from .validation import object_causes, schema_causes, update_causes

LOG = logging.getLogger("k8s_standin")

POD, JOB, SERVICE, SECRET = resource("Pod"), resource("Job"), resource("Service"), resource("Secret")
NAMESPACE, NODE, EVENT, ENDPOINTS = resource("Namespace"), resource("Node"), resource("Event"), resource("Endpoints")
PVC, CONFIGMAP = resource("PersistentVolumeClaim"), resource("ConfigMap")
JOB_ORPHAN_WARNING = ('299 - "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background '
                      'to remove them or set propagationPolicy=Orphan to suppress this warning"')
RETURNS_DELETED_OBJECT = {"Pod", "Service", "PersistentVolumeClaim", "Namespace"}
SERVER_STATUS = {"Pod", "Job", "Service", "Namespace", "PersistentVolumeClaim", "Node"}  # status only via /status
GC_FINALIZERS = ("orphan", "foregroundDeletion")
NODE_PORTS = range(30000, 32768)


@dataclass
class Config:
    """How the stand-in was started."""

    state_dir: str
    port: int
    gpus: int = 1
    lb_delay: float = 1.0
    probe_cap: float = 1.0
    backoff_cap: float = 10.0
    address: str = "127.0.0.1"


class Cluster:  # pylint: disable=too-many-public-methods
    """The API server's write path; the controllers, kubelet and Service network hang off it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store()
        self.alloc_lock = threading.Lock()
        self.started = now()
        # wired by the server: controllers (scheduler, Job, GC, namespaces, endpoints), kubelet, network
        self.controllers: Any = None
        self.kubelet: Any = None
        self.network: Any = None

    # ------------------------------------------------------------------------------------------
    # Objects that exist from the start
    # ------------------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """The namespaces, the node and the ``kubernetes`` Service a fresh cluster has."""
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(NAMESPACE, None, {"metadata": {"name": name}})
        self.store.create(NODE, self.node(), lambda: already_exists(NODE, NODE_NAME))
        self.create(SERVICE, "default", {
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": "10.96.0.1",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.config.port}]}})

    def node(self) -> Dict[str, Any]:
        """The one node, ``tao-node-0``, advertising ``TAO_K8S_GPUS`` GPUs."""
        with open("/proc/meminfo", encoding="ascii") as handle:
            mem_kib = int(handle.readline().split()[1])
        boot_id = ""
        if os.path.exists("/proc/sys/kernel/random/boot_id"):
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
                boot_id = handle.read().strip()
        resources = {"cpu": str(os.cpu_count() or 1), "memory": "%dKi" % mem_kib, "pods": "110",
                     "ephemeral-storage": "100Gi", "nvidia.com/gpu": str(self.config.gpus)}
        stamp = now()
        conditions = [{"type": kind, "status": "False", "reason": reason, "message": message,
                       "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                      for kind, reason, message in (
                          ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                          ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                          ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp,
                           "lastTransitionTime": stamp})
        machine = platform.machine()
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
        docker_version = getattr(self.kubelet, "docker_version", "") if self.kubelet else ""
        return {
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": NODE_NAME, "uid": new_uid(), "creationTimestamp": stamp,
                         "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux",
                                    "beta.kubernetes.io/arch": arch, "node-role.kubernetes.io/control-plane": "",
                                    "nvidia.com/gpu.present": "true" if self.config.gpus else "false",
                                    "nvidia.com/gpu.count": str(self.config.gpus)},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": "172.17.0.0/16", "podCIDRs": ["172.17.0.0/16"]},
            "status": {"capacity": dict(resources), "allocatable": dict(resources), "conditions": conditions,
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                     {"type": "Hostname", "address": NODE_NAME}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                       "nodeInfo": {"machineID": boot_id.replace("-", ""), "systemUUID": boot_id, "bootID": boot_id,
                                    "kernelVersion": platform.release(), "osImage": "tao k8s stand-in",
                                    "containerRuntimeVersion": "docker://%s" % docker_version,
                                    "kubeletVersion": VERSION, "kubeProxyVersion": VERSION,
                                    "operatingSystem": "linux", "architecture": arch},
                       "phase": "Running"}}

    # ------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------
    def namespace_for_write(self, res: Resource, namespace: Optional[str], name: str) -> None:
        """404 if the namespace does not exist, 403 if it is being deleted."""
        if not res.namespaced:
            return
        ns = self.store.find(NAMESPACE, None, namespace or "")
        if ns is None:
            raise ApiError(404, "NotFound", 'namespaces "%s" not found' % namespace, {"name": namespace, "kind": "namespaces"})
        if (ns.get("status") or {}).get("phase") == "Terminating":
            error = forbidden(res, name, "unable to create new content in namespace %s because it is being terminated" % namespace)
            error.details = dict(error.details or {}, causes=[{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                                                               "message": "namespace %s is being terminated" % namespace}])
            raise error

    @staticmethod
    def check_kind(res: Resource, body: Any) -> Dict[str, Any]:
        """The body as an object of the resource's kind (kind/apiVersion filled in when absent)."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not a %s object" % res.kind)
        body = copy.deepcopy(body)
        if body.get("kind") not in (None, "", res.kind) or body.get("apiVersion") not in (None, "", res.api_version):
            raise bad_request("the API version in the data (%s) does not match the expected API version (%s)" % (
                body.get("apiVersion"), res.api_version) if body.get("apiVersion") not in (None, "", res.api_version)
                else "%s in version \"%s\" cannot be handled as a %s: the kind in the data (%s) does not match" % (
                    res.kind, res.version, res.kind, body.get("kind")))
        body["kind"], body["apiVersion"] = res.kind, res.api_version
        if not isinstance(body.get("metadata"), dict):
            body["metadata"] = {}
        return body

    def check_schema(self, res: Resource, body: Dict[str, Any], validation: str, warnings: List[str]) -> None:
        """The strict schema; with ``fieldValidation`` Warn or Ignore unknown fields are dropped instead."""
        causes = schema_causes(res, body)
        if validation in ("Warn", "Ignore"):
            unknown = [c for c in causes if c.message.startswith("unknown field")]
            for cause in unknown:
                _drop_field(body, cause.field)
                if validation == "Warn":
                    warnings.append('299 - "%s"' % cause.message)
            causes = [c for c in causes if c not in unknown]
        if causes:
            raise invalid(res, body["metadata"].get("name") or body["metadata"].get("generateName", ""), causes)

    def check_rules(self, res: Resource, obj: Dict[str, Any], old: Optional[Dict[str, Any]] = None) -> None:
        """The server's own rules (after defaulting) and the immutable fields of an update."""
        causes = object_causes(res, obj)
        if not causes and old is not None:
            causes = update_causes(res, old, obj)
        if causes:
            raise invalid(res, obj["metadata"].get("name", ""), causes)

    # ------------------------------------------------------------------------------------------
    # Create
    # ------------------------------------------------------------------------------------------
    def create(self, res: Resource, namespace: Optional[str], body: Any, dry_run: bool = False,
               validation: str = "Strict", warnings: Optional[List[str]] = None) -> Dict[str, Any]:
        """POST: the stored object."""
        warnings = warnings if warnings is not None else []
        obj = self.check_kind(res, body)
        meta = obj["metadata"]
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        self.check_schema(res, obj, validation, warnings)
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "Internal error occurred: resourceVersion should not be set on objects "
                                                 "to be created", {"causes": [{"message": "resourceVersion should not be set "
                                                                                          "on objects to be created"}]})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"][:58] + random_suffix()
        self.namespace_for_write(res, namespace, meta.get("name", ""))
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
                    "managedFields"):
            meta.pop(key, None)
        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now()
        self.defaults(res, obj, creating=True)
        self.check_rules(res, obj)
        with self.alloc_lock:
            self.admit(res, obj, None)
            if dry_run:
                return obj
            return self.store.create(res, obj, lambda: already_exists(res, meta["name"]))

    def defaults(self, res: Resource, obj: Dict[str, Any], creating: bool) -> None:  # pylint: disable=too-many-branches
        """What the API server's defaulting fills in."""
        meta = obj["metadata"]
        if res.kind in ("Job", "Pod", "Service", "Namespace", "PersistentVolumeClaim") and creating:
            status = {"Job": {}, "Pod": {"phase": "Pending"}, "Service": {"loadBalancer": {}},
                      "Namespace": {"phase": "Active"}, "PersistentVolumeClaim": {"phase": "Pending"}}[res.kind]
            obj["status"] = status
        if res.kind == "Namespace":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        elif res.kind == "Pod":
            meta.setdefault("generation", 1)
            spec = obj.setdefault("spec", {})
            _pod_spec_defaults(spec, pod=True)
            if creating:
                obj["status"]["qosClass"] = qos_class(spec)
        elif res.kind == "Job":
            meta.setdefault("generation", 1)
            spec = obj.setdefault("spec", {})
            for key, value in (("parallelism", 1), ("completions", 1), ("backoffLimit", 6),
                               ("completionMode", "NonIndexed"), ("suspend", False),
                               ("podReplacementPolicy", "TerminatingOrFailed"), ("manualSelector", None)):
                if value is not None:
                    spec.setdefault(key, value)
            template = spec.setdefault("template", {})
            template.setdefault("metadata", {})
            if creating and not spec.get("manualSelector"):
                labels = template["metadata"].setdefault("labels", {})
                labels.update({"batch.kubernetes.io/controller-uid": meta["uid"], "batch.kubernetes.io/job-name": meta["name"],
                               "controller-uid": meta["uid"], "job-name": meta["name"]})
                spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}})
            _pod_spec_defaults(template.setdefault("spec", {}), pod=False)
        elif res.kind == "Service":
            spec = obj.setdefault("spec", {})
            kind = spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            if kind != "ExternalName":
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
                spec.setdefault("internalTrafficPolicy", "Cluster")
            if kind in ("NodePort", "LoadBalancer"):
                spec.setdefault("externalTrafficPolicy", "Cluster")
            if kind == "LoadBalancer":
                spec.setdefault("allocateLoadBalancerNodePorts", True)
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
            obj.setdefault("status", {}).setdefault("loadBalancer", {})
        elif res.kind == "Secret":
            obj.setdefault("type", "Opaque")
            for key, value in (obj.pop("stringData", None) or {}).items():
                obj.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()
        elif res.kind == "PersistentVolumeClaim":
            spec = obj.setdefault("spec", {})
            spec.setdefault("volumeMode", "Filesystem")
            spec.setdefault("storageClassName", "standard")
            if creating:
                meta.setdefault("finalizers", []).append("kubernetes.io/pvc-protection")
        elif res.kind == "Event":
            obj.setdefault("type", "Normal")
            obj.setdefault("count", 1)
            obj.setdefault("firstTimestamp", now())
            obj.setdefault("lastTimestamp", obj["firstTimestamp"])

    def admit(self, res: Resource, obj: Dict[str, Any], old: Optional[Dict[str, Any]]) -> None:
        """Allocation: cluster IPs and node ports of Services (called under ``alloc_lock``)."""
        if res.kind != "Service":
            return
        spec = obj["spec"]
        old_spec = (old or {}).get("spec") or {}
        kind = spec["type"]
        if kind == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
            return
        taken_ips, taken_ports = self._allocated(obj["metadata"].get("uid"))
        if not spec.get("clusterIP"):
            spec["clusterIP"] = old_spec.get("clusterIP") or self._free_cluster_ip(taken_ips)
        elif spec["clusterIP"] != "None" and spec["clusterIP"] != old_spec.get("clusterIP"):
            address = ipaddress.ip_address(spec["clusterIP"])
            if address not in ipaddress.ip_network("10.96.0.0/12"):
                raise invalid(res, obj["metadata"]["name"], [_cause("spec.clusterIPs[0]", spec["clusterIP"],
                                                                    "provided IP is not in the valid range. The range of "
                                                                    "valid IPs is 10.96.0.0/12")])
            if spec["clusterIP"] in taken_ips:
                raise invalid(res, obj["metadata"]["name"], [_cause("spec.clusterIPs[0]", spec["clusterIP"],
                                                                    "provided IP is already allocated")])
        spec["clusterIPs"] = [spec["clusterIP"]]
        old_ports = {(p.get("port"), p.get("protocol")): p.get("nodePort") for p in old_spec.get("ports") or []}
        wants_node_ports = kind == "NodePort" or (kind == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True))
        for i, port in enumerate(spec.get("ports") or []):
            if not wants_node_ports:
                if kind == "ClusterIP":
                    port.pop("nodePort", None)
                continue
            wanted = port.get("nodePort") or old_ports.get((port.get("port"), port.get("protocol")))
            if wanted:
                if wanted in taken_ports:
                    raise invalid(res, obj["metadata"]["name"], [_cause("spec.ports[%d].nodePort" % i, wanted,
                                                                        "provided port is already allocated")])
                port["nodePort"] = wanted
            else:
                port["nodePort"] = self._free_node_port(taken_ports)
            taken_ports.add(port["nodePort"])

    def _allocated(self, uid: Optional[str]) -> Tuple[set, set]:
        services = self.store.select(SERVICE)
        ips, ports = set(), set()
        for svc in services:
            if svc["metadata"]["uid"] == uid:
                continue
            ips.add(svc["spec"].get("clusterIP"))
            ports.update(p.get("nodePort") for p in svc["spec"].get("ports") or [] if p.get("nodePort"))
        return ips, ports

    @staticmethod
    def _free_cluster_ip(taken: set) -> str:
        for index in range(10, 65535):
            address = "10.96.%d.%d" % (index // 256, index % 256)
            if address not in taken and index % 256 not in (0, 255):
                return address
        raise ApiError(500, "InternalError", "Internal error occurred: failed to allocate a serviceIP: range is full")

    def _free_node_port(self, taken: set) -> int:
        start = 30000 + (os.getpid() * 7919) % len(NODE_PORTS)
        for offset in range(len(NODE_PORTS)):
            port = NODE_PORTS[(start - 30000 + offset) % len(NODE_PORTS)]
            if port not in taken and _bindable(self.config.address, port):
                return port
        raise ApiError(500, "InternalError", "Internal error occurred: failed to allocate a nodePort: range is full")

    # ------------------------------------------------------------------------------------------
    # Update (PUT) and patch
    # ------------------------------------------------------------------------------------------
    def replace(self, res: Resource, namespace: Optional[str], name: str, body: Any, dry_run: bool = False,
                subresource: Optional[str] = None, validation: str = "Strict",
                warnings: Optional[List[str]] = None) -> Dict[str, Any]:
        """PUT: the stored object."""
        warnings = warnings if warnings is not None else []
        obj = self.check_kind(res, body)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request("the name of the object (%s) does not match the name on the URL (%s)" % (meta["name"], name))
        meta["name"] = name
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
        self.check_schema(res, obj, validation, warnings)
        old = self.store.get(res, namespace, name)
        new = self._merge_update(res, old, obj, subresource)
        self.check_rules(res, new, old)
        with self.alloc_lock:
            self.admit(res, new, old)
            if dry_run:
                return new

            def apply(current: Dict[str, Any]) -> None:
                wanted_rv = obj["metadata"].get("resourceVersion")
                if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                    raise conflict(res, name, "the object has been modified; please apply your changes to the latest "
                                              "version and try again")
                if current["metadata"]["uid"] != old["metadata"]["uid"]:
                    raise conflict(res, name, "the object has been modified; please apply your changes to the latest "
                                              "version and try again")
                live_status = current.get("status") if subresource != "status" and res.kind in SERVER_STATUS else None
                current.clear()
                current.update(copy.deepcopy(new))
                if live_status is not None:
                    current["status"] = live_status

            stored = self.store.mutate(res, namespace, name, apply)
        if stored is None:
            raise ApiError(404, "NotFound", '%s "%s" not found' % (res.group_resource, name))
        self.finish_if_unblocked(res, stored)
        return stored

    def _merge_update(self, res: Resource, old: Dict[str, Any], obj: Dict[str, Any],
                      subresource: Optional[str]) -> Dict[str, Any]:
        """The object an update stores: server-owned metadata and (for the main resource) the status are kept."""
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = obj.get("status", {})
            return new
        new = copy.deepcopy(obj)
        meta, old_meta = new["metadata"], old["metadata"]
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                    "namespace", "generateName"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        if res.kind in SERVER_STATUS:
            new["status"] = copy.deepcopy(old.get("status", {}))
        if res.kind == "Namespace":
            new["spec"] = copy.deepcopy(old.get("spec", {}))
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        self.defaults(res, new, creating=False)
        if res.kind in ("Job", "Pod") and json.dumps(new.get("spec"), sort_keys=True) != json.dumps(old.get("spec"), sort_keys=True):
            meta["generation"] = old_meta.get("generation", 1) + 1
        return new

    def patch(self, res: Resource, namespace: Optional[str], name: str, patch: Any, content_type: str,
              dry_run: bool = False, subresource: Optional[str] = None, validation: str = "Strict",
              warnings: Optional[List[str]] = None) -> Dict[str, Any]:
        """PATCH (JSON patch, merge patch, strategic merge patch, apply): the stored object.

        A patch that names no resourceVersion is retried when the object changed meanwhile, as the server does."""
        explicit = isinstance(patch, dict) and bool((patch.get("metadata") or {}).get("resourceVersion"))
        for attempt in range(5):
            try:
                return self._patch_once(res, namespace, name, patch, content_type, dry_run, subresource, validation,
                                        warnings)
            except ApiError as exc:
                if exc.reason != "Conflict" or explicit or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _patch_once(self, res: Resource, namespace: Optional[str], name: str, patch: Any, content_type: str,
                    dry_run: bool, subresource: Optional[str], validation: str,
                    warnings: Optional[List[str]]) -> Dict[str, Any]:
        kind = content_type.split(";")[0].strip().lower()
        current = self.store.find(res, namespace, name)
        if kind in ("application/apply-patch+yaml", "application/apply-patch+json"):
            if current is None:
                return self.create(res, namespace, patch, dry_run, validation, warnings)
            kind = "application/strategic-merge-patch+json"
        if current is None:
            raise ApiError(404, "NotFound", '%s "%s" not found' % (res.group_resource, name), {"name": name, "kind": res.plural})
        if kind == "application/json-patch+json":
            patched = json_patch(current, patch)
        elif kind == "application/merge-patch+json":
            if not isinstance(patch, dict):
                raise bad_request("the body of a merge patch must be a JSON object")
            patched = merge_patch(current, patch)
        elif kind == "application/strategic-merge-patch+json":
            if not isinstance(patch, dict):
                raise bad_request("the body of a strategic merge patch must be a JSON object")
            patched = strategic_merge_patch(current, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                           "media types include: application/json-patch+json, application/merge-patch+json, "
                           "application/strategic-merge-patch+json, application/apply-patch+yaml")
        if not isinstance(patched, dict):
            raise bad_request("the patch did not produce an object")
        if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
            patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.replace(res, namespace, name, patched, dry_run, subresource, validation, warnings)

    # ------------------------------------------------------------------------------------------
    # Delete
    # ------------------------------------------------------------------------------------------
    def delete(self, res: Resource, namespace: Optional[str], name: str, options: Optional[Dict[str, Any]] = None,
               dry_run: bool = False, warnings: Optional[List[str]] = None) -> Tuple[int, Dict[str, Any]]:
        """DELETE: (HTTP status, body) as the real server answers."""
        options = options or {}
        warnings = warnings if warnings is not None else []
        current = self.store.get(res, namespace, name)
        meta = current["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise conflict(res, name, "Precondition failed: UID in precondition: %s, UID in object meta: %s" % (pre["uid"], meta["uid"]))
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise conflict(res, name, "Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in "
                                      "meta: %s" % (pre["resourceVersion"], meta["resourceVersion"]))
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise invalid(res, name, [_cause("propagationPolicy", policy, 'supported values: "Foreground", '
                                                                          '"Background", "Orphan", "nil"')])
        if policy is None:
            policy = "Orphan" if res.kind == "Job" else "Background"
            if res.kind == "Job":
                warnings.append(JOB_ORPHAN_WARNING)
        if res.kind == "Node":
            raise forbidden(res, name, "the stand-in's node cannot be deleted")
        if dry_run:
            return 200, current if res.kind in RETURNS_DELETED_OBJECT else _success(res, current)
        if res.kind == "Namespace":
            if name in ("default", "kube-system", "kube-public"):
                raise forbidden(res, name, "this namespace may not be deleted")
            return 200, self._terminate_namespace(current)
        if res.kind == "Pod":
            return 200, self._delete_pod(current, options.get("gracePeriodSeconds"))
        other_finalizers = [f for f in meta.get("finalizers") or [] if f not in GC_FINALIZERS]
        if policy in ("Orphan", "Foreground") or other_finalizers:
            finalizer = {"Orphan": "orphan", "Foreground": "foregroundDeletion"}.get(policy)

            def mark(obj: Dict[str, Any]) -> None:
                obj["metadata"].setdefault("deletionTimestamp", now())
                obj["metadata"].setdefault("deletionGracePeriodSeconds", 0)
                if finalizer and finalizer not in obj["metadata"].setdefault("finalizers", []):
                    obj["metadata"]["finalizers"].append(finalizer)

            marked = self.store.mutate(res, namespace, name, mark)
            if marked is None:
                raise ApiError(404, "NotFound", '%s "%s" not found' % (res.group_resource, name))
            if policy == "Orphan":
                self.orphan_dependents(marked)
                marked = self.drop_finalizer(res, marked, "orphan") or marked
            elif policy == "Foreground":
                self.controllers.wake()
            code = 202 if options.get("orphanDependents") is False else 200
            return code, marked
        removed = self.store.remove(res, namespace, name)
        if removed is None:
            raise ApiError(404, "NotFound", '%s "%s" not found' % (res.group_resource, name))
        return 200, removed if res.kind in RETURNS_DELETED_OBJECT else _success(res, removed)

    def _delete_pod(self, pod: Dict[str, Any], grace: Optional[int]) -> Dict[str, Any]:
        meta = pod["metadata"]
        if grace is None:
            grace = meta.get("deletionGracePeriodSeconds", pod["spec"].get("terminationGracePeriodSeconds", 30))
        unscheduled = not pod["spec"].get("nodeName")
        if unscheduled or grace == 0 and not self.kubelet.has_worker(meta["uid"]):
            removed = self.store.remove(POD, meta["namespace"], meta["name"], meta["uid"])
            return removed or pod

        def mark(obj: Dict[str, Any]) -> None:
            previous = obj["metadata"].get("deletionGracePeriodSeconds")
            if previous is None or grace < previous:
                obj["metadata"]["deletionTimestamp"] = now()
                obj["metadata"]["deletionGracePeriodSeconds"] = grace

        marked = self.store.mutate(POD, meta["namespace"], meta["name"], mark)
        return marked or pod

    def _terminate_namespace(self, ns: Dict[str, Any]) -> Dict[str, Any]:
        def mark(obj: Dict[str, Any]) -> None:
            obj["metadata"].setdefault("deletionTimestamp", now())
            obj["status"]["phase"] = "Terminating"

        marked = self.store.mutate(NAMESPACE, None, ns["metadata"]["name"], mark)
        self.controllers.wake()
        return marked or ns

    def delete_collection(self, res: Resource, namespace: Optional[str], items: List[Dict[str, Any]],
                          options: Dict[str, Any], dry_run: bool) -> None:
        """DELETE on a collection: each selected object as a single delete."""
        for item in items:
            try:
                self.delete(res, namespace, item["metadata"]["name"], options, dry_run)
            except ApiError as exc:
                if exc.code != 404:
                    raise

    def orphan_dependents(self, owner: Dict[str, Any]) -> None:
        """Remove ``owner`` from the ownerReferences of its dependents."""
        uid = owner["metadata"]["uid"]
        for (plural, ns, name), _obj in self.store.dependents(uid):
            dependent_res = next(r for r in RESOURCES_BY_PLURAL if r.plural == plural)

            def strip(obj: Dict[str, Any]) -> None:
                refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                if refs:
                    obj["metadata"]["ownerReferences"] = refs
                else:
                    obj["metadata"].pop("ownerReferences", None)

            self.store.mutate(dependent_res, ns or None, name, strip)

    def drop_finalizer(self, res: Resource, obj: Dict[str, Any], finalizer: str) -> Optional[Dict[str, Any]]:
        """Remove one finalizer; the object goes once it has a deletionTimestamp and no finalizers left."""
        meta = obj["metadata"]

        def strip(current: Dict[str, Any]) -> None:
            rest = [f for f in current["metadata"].get("finalizers") or [] if f != finalizer]
            if rest:
                current["metadata"]["finalizers"] = rest
            else:
                current["metadata"].pop("finalizers", None)

        updated = self.store.mutate(res, meta.get("namespace"), meta["name"], strip)
        if updated is not None:
            self.finish_if_unblocked(res, updated)
        return updated

    def finish_if_unblocked(self, res: Resource, obj: Dict[str, Any]) -> None:
        """An object marked for deletion whose last finalizer is gone is removed."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and res.kind not in ("Pod", "Namespace"):
            self.store.remove(res, meta.get("namespace"), meta["name"], meta["uid"])


RESOURCES_BY_PLURAL = [POD, JOB, SERVICE, SECRET, NAMESPACE, NODE, EVENT, ENDPOINTS, PVC, CONFIGMAP]


def _success(res: Resource, obj: Dict[str, Any]) -> Dict[str, Any]:
    details = {"name": obj["metadata"]["name"], "kind": res.plural, "uid": obj["metadata"]["uid"]}
    if res.group:
        details["group"] = res.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _cause(field: str, value: Any, detail: str) -> Any:
    from .model import field_error  # pylint: disable=import-outside-toplevel
    return field_error(field, "FieldValueInvalid", detail, value)


def _drop_field(obj: Dict[str, Any], path: str) -> None:
    """Remove the field at ``a.b[0].c`` (an unknown field under fieldValidation Warn/Ignore)."""
    tokens: List[Any] = []
    for part in path.replace("]", "").split("."):
        name, _bracket, index = part.partition("[")
        tokens.append(name)
        if index:
            tokens += [int(i) for i in index.split("[")]
    target: Any = obj
    for token in tokens[:-1]:
        target = target[token]
    target.pop(tokens[-1], None)


def _bindable(address: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def image_pull_policy(image: str) -> str:
    """``Always`` for ``:latest`` or untagged images, else ``IfNotPresent``."""
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    return "Always" if ":" not in last or last.endswith(":latest") else "IfNotPresent"


def _pod_spec_defaults(spec: Dict[str, Any], pod: bool) -> None:
    """SetDefaults_PodSpec and the container defaults (``pod``: a Pod, not a template)."""
    for key, value in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", 30), ("dnsPolicy", "ClusterFirst"),
                       ("securityContext", {}), ("schedulerName", "default-scheduler"), ("enableServiceLinks", True)):
        spec.setdefault(key, value)
    if pod:
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        if not spec.get("tolerations"):
            spec["tolerations"] = [{"key": "node.kubernetes.io/%s" % t, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": 300} for t in ("not-ready", "unreachable")]
    for volume in spec.get("volumes") or []:
        for source in ("secret", "configMap"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)
        if isinstance(volume.get("hostPath"), dict):
            volume["hostPath"].setdefault("type", "")
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("imagePullPolicy", image_pull_policy(container.get("image", "")))
            resources = container.setdefault("resources", {})
            if pod and resources.get("limits"):
                requests = resources.setdefault("requests", {})
                for name, value in resources["limits"].items():
                    requests.setdefault(name, value)
            for port in container.get("ports") or []:
                port.setdefault("protocol", "TCP")
            for var in container.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("fieldRef")
                if isinstance(ref, dict):
                    ref.setdefault("apiVersion", "v1")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if isinstance(container.get(probe), dict):
                    _probe_defaults(container[probe])


def _probe_defaults(probe: Dict[str, Any]) -> None:
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)):
        probe.setdefault(key, value)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("scheme", "HTTP")
        probe["httpGet"].setdefault("path", "/")


def qos_class(spec: Dict[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort."""
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    any_set, guaranteed = False, True
    for container in containers:
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        if limits or requests:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
