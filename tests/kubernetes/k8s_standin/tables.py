"""``meta.k8s.io/v1`` Tables, what ``kubectl get`` asks for (``Accept: application/json;as=Table;...``):
the columns the API server prints for each kind."""

import datetime
from typing import Any, Callable, Dict, List, Tuple

from .model import Resource, parse_time

Column = Tuple[str, str, int]  # name, type, priority (1: only with -o wide)


def age(stamp: Any) -> str:
    """``duration.HumanDuration`` of the time since ``stamp``."""
    if not stamp:
        return "<unknown>"
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - parse_time(stamp)).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return "%ds" % seconds
    minutes = seconds // 60
    if minutes < 10:
        return "%dm%ds" % (minutes, seconds % 60) if seconds % 60 else "%dm" % minutes
    if minutes < 180:
        return "%dm" % minutes
    hours = minutes // 60
    if hours < 8:
        return "%dh%dm" % (hours, minutes % 60) if minutes % 60 else "%dh" % hours
    if hours < 48:
        return "%dh" % hours
    return "%dd" % (hours // 24)


def _pod(pod: Dict[str, Any]) -> List[Any]:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    reason = status.get("reason") or status.get("phase") or "Pending"
    for container in statuses:
        state = container.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated"):
            reason = state["terminated"].get("reason") or "Error"
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if scheduled and scheduled.get("status") == "False" and not statuses:
        reason = "Pending"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    ready = sum(1 for c in statuses if c.get("ready"))
    total = len((pod.get("spec") or {}).get("containers") or [])
    restarts = sum(c.get("restartCount", 0) for c in statuses)
    return [pod["metadata"]["name"], "%d/%d" % (ready, total), reason, restarts, age(pod["metadata"].get("creationTimestamp")),
            status.get("podIP") or "<none>", (pod.get("spec") or {}).get("nodeName") or "<none>"]


def _job(job: Dict[str, Any]) -> List[Any]:
    status, spec = job.get("status") or {}, job.get("spec") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    state = "Running"
    for kind in ("Complete", "Failed", "Suspended"):
        if kind in conditions:
            state = kind
    if status.get("terminating"):
        state = "Terminating" if state == "Running" else state
    duration = ""
    if status.get("startTime"):
        end = status.get("completionTime")
        seconds = ((parse_time(end) if end else datetime.datetime.now(datetime.timezone.utc))
                   - parse_time(status["startTime"])).total_seconds()
        duration = "%ds" % seconds if seconds < 120 else "%dm" % (seconds // 60)
    return [job["metadata"]["name"], state, "%d/%d" % (status.get("succeeded", 0), spec.get("completions", 1)),
            duration, age(job["metadata"].get("creationTimestamp"))]


def _service(svc: Dict[str, Any]) -> List[Any]:
    spec = svc.get("spec") or {}
    ingress = (((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
    external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress) or (
        "<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
    ports = ",".join("%d%s/%s" % (p.get("port", 0), ":%d" % p["nodePort"] if p.get("nodePort") else "", p.get("protocol", "TCP"))
                     for p in spec.get("ports") or []) or "<none>"
    selector = ",".join("%s=%s" % kv for kv in sorted((spec.get("selector") or {}).items())) or "<none>"
    return [svc["metadata"]["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", external, ports,
            age(svc["metadata"].get("creationTimestamp")), selector]


def _node(node: Dict[str, Any]) -> List[Any]:
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    roles = ",".join(sorted(k.split("/", 1)[1] for k in node["metadata"].get("labels") or {}
                            if k.startswith("node-role.kubernetes.io/"))) or "<none>"
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return [node["metadata"]["name"], "Ready" if ready.get("status") == "True" else "NotReady", roles,
            age(node["metadata"].get("creationTimestamp")), info.get("kubeletVersion", "")]


def _event(event: Dict[str, Any]) -> List[Any]:
    involved = event.get("involvedObject") or {}
    return [age(event.get("lastTimestamp") or event["metadata"].get("creationTimestamp")), event.get("type", ""),
            event.get("reason", ""), "%s/%s" % ((involved.get("kind") or "").lower(), involved.get("name", "")),
            event.get("message", "")]


def _pvc(pvc: Dict[str, Any]) -> List[Any]:
    status, spec = pvc.get("status") or {}, pvc.get("spec") or {}
    modes = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}
    phase = "Terminating" if pvc["metadata"].get("deletionTimestamp") else status.get("phase", "Pending")
    return [pvc["metadata"]["name"], phase, spec.get("volumeName", ""), (status.get("capacity") or {}).get("storage", ""),
            ",".join(modes.get(m, m) for m in status.get("accessModes") or []), spec.get("storageClassName", ""),
            age(pvc["metadata"].get("creationTimestamp"))]


def _endpoints(endpoints: Dict[str, Any]) -> List[Any]:
    addresses = ["%s:%d" % (a["ip"], p["port"]) for s in endpoints.get("subsets") or []
                 for a in s.get("addresses") or [] for p in s.get("ports") or []]
    return [endpoints["metadata"]["name"], ",".join(addresses) or "<none>",
            age(endpoints["metadata"].get("creationTimestamp"))]


def _plain(extra: Callable[[Dict[str, Any]], List[Any]]) -> Callable[[Dict[str, Any]], List[Any]]:
    return lambda obj: [obj["metadata"]["name"]] + extra(obj) + [age(obj["metadata"].get("creationTimestamp"))]


PRINTERS: Dict[str, Tuple[List[Column], Callable[[Dict[str, Any]], List[Any]]]] = {
    "Pod": ([("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0),
             ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1)], _pod),
    "Job": ([("Name", "string", 0), ("Status", "string", 0), ("Completions", "string", 0), ("Duration", "string", 0),
             ("Age", "string", 0)], _job),
    "Service": ([("Name", "string", 0), ("Type", "string", 0), ("Cluster-IP", "string", 0), ("External-IP", "string", 0),
                 ("Port(s)", "string", 0), ("Age", "string", 0), ("Selector", "string", 1)], _service),
    "Node": ([("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0),
              ("Version", "string", 0)], _node),
    "Namespace": ([("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)],
                  _plain(lambda ns: [(ns.get("status") or {}).get("phase", "Active")])),
    "Secret": ([("Name", "string", 0), ("Type", "string", 0), ("Data", "string", 0), ("Age", "string", 0)],
               _plain(lambda s: [s.get("type", "Opaque"), len(s.get("data") or {})])),
    "ConfigMap": ([("Name", "string", 0), ("Data", "string", 0), ("Age", "string", 0)],
                  _plain(lambda c: [len(c.get("data") or {}) + len(c.get("binaryData") or {})])),
    "Event": ([("Last Seen", "string", 0), ("Type", "string", 0), ("Reason", "string", 0), ("Object", "string", 0),
               ("Message", "string", 0)], _event),
    "PersistentVolumeClaim": ([("Name", "string", 0), ("Status", "string", 0), ("Volume", "string", 0),
                               ("Capacity", "string", 0), ("Access Modes", "string", 0), ("StorageClass", "string", 0),
                               ("Age", "string", 0)], _pvc),
    "Endpoints": ([("Name", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)], _endpoints),
}


def wants_table(accept: str) -> bool:
    """Whether the Accept header asks for a meta.k8s.io/v1 Table."""
    return any("as=Table" in part and "v=v1;" in part.replace(" ", "") + ";" and "g=meta.k8s.io" in part
               for part in accept.split(","))


def table(res: Resource, items: List[Dict[str, Any]], meta: Dict[str, Any], include: str) -> Dict[str, Any]:
    """The Table of ``items`` (``include``: None, Metadata or Object, the includeObject parameter)."""
    columns, printer = PRINTERS[res.kind]
    rows = []
    for item in items:
        row: Dict[str, Any] = {"cells": printer(item)}
        if include == "Object":
            row["object"] = dict(item, kind=res.kind, apiVersion=res.api_version)
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]}
        rows.append(row)
    definitions = [{"name": name, "type": kind, "format": "name" if name == "Name" else "", "description": "",
                    "priority": priority} for name, kind, priority in columns]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": definitions,
            "rows": rows}
