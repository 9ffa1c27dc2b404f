"""The control plane's loops: the scheduler, the Job controller, the garbage collector, the namespace and
PVC controllers, the endpoints controller and the event recorder.

Store changes are queued by a listener and handled one at a time on the controller thread, with a tick
for what depends on time (deadlines, back-off, TTL, scheduling retries)."""

import copy
import logging
import queue
import threading
import time
from decimal import Decimal
from typing import Any, Dict, List, Optional, Set, Tuple

from . import LABEL, NODE_NAME
from .cluster import ENDPOINTS, EVENT, JOB, NAMESPACE, NODE, POD, PVC, RESOURCES_BY_PLURAL, SERVICE, Cluster
from .model import (ApiError, Resource, already_exists, labels_match, new_uid, now, parse_quantity, parse_time,
                    random_suffix, selector_requirements)

LOG = logging.getLogger("k8s_standin")
TERMINAL = ("Succeeded", "Failed")


def controller_of(obj: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ownerReference with ``controller: true``."""
    return next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def condition(obj: Dict[str, Any], kind: str) -> Optional[Dict[str, Any]]:
    """A status condition by type."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def set_condition(status: Dict[str, Any], kind: str, value: str, reason: Optional[str] = None,
                  message: Optional[str] = None, probe_time: bool = True) -> None:
    """Set a condition, keeping lastTransitionTime unless the status changes."""
    conditions = status.setdefault("conditions", [])
    old = next((c for c in conditions if c.get("type") == kind), None)
    new = {"type": kind, "status": value}
    if probe_time:
        new["lastProbeTime"] = None
    new["lastTransitionTime"] = old["lastTransitionTime"] if old and old.get("status") == value else now()
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    if old is None:
        conditions.append(new)
    else:
        conditions[conditions.index(old)] = new


def pod_ready(pod: Dict[str, Any]) -> bool:
    """Whether the pod's Ready condition is True."""
    ready = condition(pod, "Ready")
    return bool(ready and ready.get("status") == "True")


def pod_requests(spec: Dict[str, Any]) -> Dict[str, Decimal]:
    """What the scheduler counts: the sum over containers, at least the largest init container."""
    def of(container: Dict[str, Any]) -> Dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = dict(resources.get("limits") or {})
        merged.update(resources.get("requests") or {})
        return {k: parse_quantity(v) for k, v in merged.items()}

    total: Dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for key, value in of(container).items():
            total[key] = total.get(key, Decimal(0)) + value
    for container in spec.get("initContainers") or []:
        for key, value in of(container).items():
            total[key] = max(total.get(key, Decimal(0)), value)
    return total


class EventRecorder:
    """core/v1 Events, aggregated like the client-go recorder (same object, reason and message: count + 1)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self.index: Dict[Tuple[str, ...], Tuple[str, str]] = {}

    def record(self, obj: Dict[str, Any], kind: str, reason: str, message: str, component: str,
               field_path: Optional[str] = None) -> None:
        """Record an event about ``obj`` (type ``kind``: Normal or Warning)."""
        store = self.cluster.store
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        ns = store.find(NAMESPACE, None, namespace)
        if ns is None or ns["status"].get("phase") == "Terminating":
            return
        key = (meta["uid"], kind, reason, message, component, field_path or "")
        stamp = now()
        with self.lock:
            known = self.index.get(key)
            if known:
                def bump(event: Dict[str, Any]) -> None:
                    event["count"] = event.get("count", 1) + 1
                    event["lastTimestamp"] = stamp

                if store.mutate(EVENT, known[0], known[1], bump) is not None:
                    return
            involved = {"kind": obj.get("kind"), "namespace": meta.get("namespace"), "name": meta["name"],
                        "uid": meta["uid"], "apiVersion": obj.get("apiVersion"),
                        "resourceVersion": meta.get("resourceVersion")}
            if field_path:
                involved["fieldPath"] = field_path
            if not meta.get("namespace"):
                involved.pop("namespace")
            source = {"component": component}
            if component == "kubelet":
                source["host"] = NODE_NAME
            event = {"kind": "Event", "apiVersion": "v1",
                     "metadata": {"name": "%s.%x" % (meta["name"], time.time_ns()), "namespace": namespace,
                                  "uid": new_uid(), "creationTimestamp": stamp},
                     "involvedObject": involved, "reason": reason, "message": message, "source": source,
                     "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "type": kind, "eventTime": None,
                     "reportingComponent": component, "reportingInstance": NODE_NAME if component == "kubelet" else ""}
            try:
                store.create(EVENT, event, lambda: already_exists(EVENT, event["metadata"]["name"]))
            except ApiError:
                return
            self.index[key] = (namespace, event["metadata"]["name"])


class ControllerManager:  # pylint: disable=too-many-instance-attributes
    """Runs every controller on one thread, fed by store changes and a 0.5 s tick."""

    TICK = 0.5

    def __init__(self, cluster: Cluster, events: EventRecorder) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.events = events
        self.queue: "queue.Queue[Optional[Tuple[str, Resource, Dict[str, Any]]]]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="controllers", daemon=True)
        self.unschedulable: Dict[str, float] = {}  # pod uid -> when it was last tried
        self.counted: Dict[str, Set[str]] = {}  # job uid -> pods whose end is in the Job's status
        self.last_failure: Dict[str, float] = {}  # job uid -> when its last pod failed
        self.was_active: Dict[str, Set[str]] = {}  # job uid -> its pods active at the last sync
        self.stopping = False
        self.store.add_listener(self._on_change)

    def start(self) -> None:
        """Start the controller thread."""
        self.thread.start()

    def stop(self) -> None:
        """Stop the controller thread."""
        self.stopping = True
        self.queue.put(None)
        self.thread.join(timeout=5)

    def wake(self) -> None:
        """Run the periodic checks now."""
        self.queue.put(("TICK", POD, {}))

    def _on_change(self, event: str, res: Resource, obj: Dict[str, Any]) -> None:
        if res.kind != "Event":
            self.queue.put((event, res, obj))

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self.stopping:
            try:
                item = self.queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = ("TICK", POD, {})
            if item is None:
                return
            try:
                if item[0] == "TICK":
                    if time.monotonic() >= next_tick:
                        next_tick = time.monotonic() + self.TICK
                    self.tick()
                else:
                    self.handle(*item)
            except Exception:  # pylint: disable=broad-except
                LOG.exception("controller error")

    # ------------------------------------------------------------------------------------------
    def handle(self, event: str, res: Resource, obj: Dict[str, Any]) -> None:
        """React to one store change."""
        meta = obj["metadata"]
        ns = meta.get("namespace")
        if event == "DELETED":
            self.collect_garbage(meta["uid"])
        if res.kind == "Pod":
            if event != "DELETED" and not obj["spec"].get("nodeName") and not meta.get("deletionTimestamp"):
                self.schedule(obj)
            if event == "DELETED":
                self.unschedulable.pop(meta["uid"], None)
            if event == "DELETED" or obj["status"].get("phase") in TERMINAL or meta.get("deletionTimestamp"):
                self.retry_unschedulable(force=True)
            owner = controller_of(obj)
            if owner and owner.get("kind") == "Job":
                self.sync_job(ns, owner["name"])
            self.sync_endpoints(ns)
        elif res.kind == "Job":
            if event == "DELETED":
                self.counted.pop(meta["uid"], None)
                self.last_failure.pop(meta["uid"], None)
                self.was_active.pop(meta["uid"], None)
            else:
                self.sync_job(ns, meta["name"])
        elif res.kind == "Service":
            self.sync_endpoints(ns, meta["name"])
            if event == "DELETED":
                self.cluster.network.remove(meta["uid"])
            else:
                self.cluster.network.sync(obj)
        elif res.kind == "PersistentVolumeClaim" and event != "DELETED":
            self.sync_pvc(obj)
        elif res.kind == "Namespace" and event != "DELETED":
            self.sync_namespace(meta["name"])

    def tick(self) -> None:
        """What depends on time: Jobs (deadline, back-off, TTL), scheduling retries, pending deletions."""
        jobs = self.store.select(JOB)
        for job in jobs:
            self.sync_job(job["metadata"]["namespace"], job["metadata"]["name"])
        self.retry_unschedulable(force=False)
        namespaces = self.store.select(NAMESPACE)
        for ns in namespaces:
            if ns["status"].get("phase") == "Terminating":
                self.sync_namespace(ns["metadata"]["name"])
        for res in RESOURCES_BY_PLURAL:
            items = self.store.select(res)
            for obj in items:
                finalizers = obj["metadata"].get("finalizers") or []
                if obj["metadata"].get("deletionTimestamp") and "foregroundDeletion" in finalizers:
                    self.foreground(res, obj)
                if res.kind == "PersistentVolumeClaim" and obj["metadata"].get("deletionTimestamp"):
                    self.sync_pvc(obj)

    # ------------------------------------------------------------------------------------------
    # Scheduler
    # ------------------------------------------------------------------------------------------
    def fit(self, pod: Dict[str, Any]) -> Optional[str]:
        """Why the pod does not fit on the node (None if it does), worded like the scheduler."""
        node = self.store.get(NODE, None, NODE_NAME)
        spec = pod["spec"]
        ns = pod["metadata"]["namespace"]
        for volume in spec.get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                pvc = self.store.find(PVC, ns, claim)
                if pvc is None:
                    return ('0/1 nodes are available: persistentvolumeclaim "%s" not found. preemption: 0/1 nodes are '
                            'available: 1 Preemption is not helpful for scheduling.' % claim)
                if pvc["metadata"].get("deletionTimestamp"):
                    return ('0/1 nodes are available: persistentvolumeclaim "%s" is being deleted. preemption: 0/1 '
                            'nodes are available: 1 Preemption is not helpful for scheduling.' % claim)
        labels = node["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
            return ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 "
                    "nodes are available: 1 Preemption is not helpful for scheduling.")
        allocatable = {k: parse_quantity(v) for k, v in node["status"]["allocatable"].items()}
        used: Dict[str, Decimal] = {"pods": Decimal(0)}
        pods = self.store.select(POD)
        for other in pods:
            if other["spec"].get("nodeName") == NODE_NAME and other["status"].get("phase") not in TERMINAL:
                used["pods"] += 1
                for key, value in pod_requests(other["spec"]).items():
                    used[key] = used.get(key, Decimal(0)) + value
        short = []
        if used["pods"] + 1 > allocatable["pods"]:
            short.append("1 Too many pods")
        for key, value in sorted(pod_requests(spec).items()):
            if value > 0 and used.get(key, Decimal(0)) + value > allocatable.get(key, Decimal(0)):
                short.append("1 Insufficient %s" % key)
        if short:
            return ("0/1 nodes are available: %s. preemption: 0/1 nodes are available: 1 No preemption victims found "
                    "for incoming pod." % ", ".join(short))
        return None

    def schedule(self, pod: Dict[str, Any]) -> None:
        """Bind the pod to the node, or mark it Unschedulable with a FailedScheduling event."""
        meta = pod["metadata"]
        if pod["spec"].get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        why = self.fit(pod)
        if why:
            self.unschedulable[meta["uid"]] = time.monotonic()

            def unschedulable(obj: Dict[str, Any]) -> None:
                set_condition(obj["status"], "PodScheduled", "False", "Unschedulable", why)

            stored = self.store.mutate(POD, meta["namespace"], meta["name"], unschedulable)
            if stored is not None:
                self.events.record(stored, "Warning", "FailedScheduling", why, "default-scheduler")
            return
        self.unschedulable.pop(meta["uid"], None)

        def bind(obj: Dict[str, Any]) -> Optional[bool]:
            if obj["metadata"]["uid"] != meta["uid"] or obj["spec"].get("nodeName"):
                return False
            obj["spec"]["nodeName"] = NODE_NAME
            set_condition(obj["status"], "PodScheduled", "True")
            return None

        stored = self.store.mutate(POD, meta["namespace"], meta["name"], bind)
        if stored is not None:
            self.events.record(stored, "Normal", "Scheduled", "Successfully assigned %s/%s to %s" % (
                meta["namespace"], meta["name"], NODE_NAME), "default-scheduler")

    def retry_unschedulable(self, force: bool) -> None:
        """Try the pending pods again: at once when something was freed, else every 5 s."""
        for uid, tried in list(self.unschedulable.items()):
            if not force and time.monotonic() - tried < 5:
                continue
            where = self.store.uids().get(uid)
            if where is None:
                self.unschedulable.pop(uid, None)
                continue
            pod = self.store.find(POD, where[1], where[2])
            if pod and not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                self.schedule(pod)
            else:
                self.unschedulable.pop(uid, None)

    # ------------------------------------------------------------------------------------------
    # Job controller
    # ------------------------------------------------------------------------------------------
    def sync_job(self, ns: str, name: str) -> None:  # pylint: disable=too-many-locals,too-many-branches,too-many-statements
        """Reconcile one Job: its pods, counts, conditions, deadline, back-off and TTL."""
        job = self.store.find(JOB, ns, name)
        if job is None:
            return
        meta, spec = job["metadata"], job["spec"]
        uid = meta["uid"]
        if meta.get("deletionTimestamp") and "foregroundDeletion" not in (meta.get("finalizers") or []):
            return
        pods = [p for p, ref in ((p, controller_of(p)) for p in self.store.select(POD, ns)) if ref and ref.get("uid") == uid]
        status = job.get("status") or {}
        counted = self.counted.setdefault(uid, set())
        succeeded, failed = status.get("succeeded", 0), status.get("failed", 0)
        for pod in pods:
            phase = pod["status"].get("phase")
            if phase in TERMINAL and pod["metadata"]["uid"] not in counted:
                counted.add(pod["metadata"]["uid"])
                if phase == "Succeeded":
                    succeeded += 1
                else:
                    failed += 1
                    self.last_failure[uid] = time.monotonic()
        present = {p["metadata"]["uid"] for p in pods}
        for gone in self.was_active.get(uid, set()) - present - counted:
            counted.add(gone)  # removed before it ended: a failure, as the job-tracking finalizer would count it
            failed += 1
            self.last_failure[uid] = time.monotonic()
        active = [p for p in pods if p["status"].get("phase") not in TERMINAL and not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in pods if p["status"].get("phase") not in TERMINAL and p["metadata"].get("deletionTimestamp")]
        restarts = sum(c.get("restartCount", 0) for p in pods for c in p["status"].get("containerStatuses") or [])
        finished = next((c for c in status.get("conditions") or [] if c["type"] in ("Complete", "Failed")
                         and c["status"] == "True"), None)
        stamp = now()
        new_status = copy.deepcopy(status)
        fail: Optional[Tuple[str, str]] = None
        if finished is None and not spec.get("suspend"):
            new_status.setdefault("startTime", stamp)
            started = parse_time(new_status["startTime"]).timestamp()
            if spec.get("activeDeadlineSeconds") and time.time() - started >= spec["activeDeadlineSeconds"]:
                fail = ("DeadlineExceeded", "Job was active longer than specified deadline")
            elif failed + restarts > spec.get("backoffLimit", 6):
                fail = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if fail:
            set_condition(new_status, "FailureTarget", "True", fail[0], fail[1])
            set_condition(new_status, "Failed", "True", fail[0], fail[1])
            self.events.record(job, "Warning", fail[0], fail[1], "job-controller")
            finished = condition({"status": new_status}, "Failed")
        elif finished is None and succeeded >= spec.get("completions", 1):
            set_condition(new_status, "SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of "
                                                                                          "succeeded pods")
            set_condition(new_status, "Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods")
            new_status["completionTime"] = stamp
            self.events.record(job, "Normal", "Completed", "Job completed", "job-controller")
            finished = condition({"status": new_status}, "Complete")
        if finished is not None or spec.get("suspend"):
            for pod in active:
                self._delete_job_pod(job, pod)
            if spec.get("suspend") and finished is None:
                set_condition(new_status, "Suspended", "True", "JobSuspended", "Job suspended")
            terminating += active
            active = []
        elif spec.get("suspend") is False and condition(job, "Suspended"):
            set_condition(new_status, "Suspended", "False", "JobResumed", "Job resumed")
        else:
            want = min(spec.get("parallelism", 1), spec.get("completions", 1) - succeeded) - len(active)
            delay = min(self.cluster.config.backoff_cap, 2 ** max(0, failed - 1)) if failed else 0
            ready_to_retry = time.monotonic() - self.last_failure.get(uid, 0) >= delay
            for _missing in range(max(0, want) if ready_to_retry else 0):
                pod = self._create_job_pod(job)
                if pod is not None:
                    active.append(pod)
        self.was_active[uid] = {p["metadata"]["uid"] for p in active + terminating}
        new_status["active"] = len(active)
        new_status["ready"] = sum(1 for p in active if pod_ready(p))
        new_status["terminating"] = len(terminating)
        new_status["succeeded"], new_status["failed"] = succeeded, failed
        for key in ("active", "succeeded", "failed"):
            if not new_status[key]:
                new_status.pop(key)
        new_status.setdefault("uncountedTerminatedPods", {})

        def write(obj: Dict[str, Any]) -> Optional[bool]:
            if obj["metadata"]["uid"] != uid:
                return False
            obj["status"] = new_status
            return None

        self.store.mutate(JOB, ns, name, write)
        ttl = spec.get("ttlSecondsAfterFinished")
        if finished is not None and ttl is not None and not meta.get("deletionTimestamp"):
            ended = parse_time(finished["lastTransitionTime"]).timestamp()
            if time.time() - ended >= ttl:
                self._delete(JOB, ns, name, "Background")

    def _create_job_pod(self, job: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        meta = job["metadata"]
        template = copy.deepcopy(job["spec"]["template"])
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels.update({"batch.kubernetes.io/controller-uid": meta["uid"], "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": meta["uid"], "job-name": meta["name"]})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "%s-%s" % (meta["name"], random_suffix()), "labels": labels,
                            "annotations": dict(tmeta.get("annotations") or {}),
                            "finalizers": [],
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
               "spec": template.get("spec") or {}}
        pod["metadata"].pop("finalizers")
        if not pod["metadata"]["annotations"]:
            pod["metadata"].pop("annotations")
        try:
            created = self.cluster.create(POD, meta["namespace"], pod)
        except ApiError as exc:
            self.events.record(job, "Warning", "FailedCreate", "Error creating: %s" % exc.message, "job-controller")
            return None
        self.events.record(job, "Normal", "SuccessfulCreate", "Created pod: %s" % created["metadata"]["name"],
                           "job-controller")
        return created

    def _delete_job_pod(self, job: Dict[str, Any], pod: Dict[str, Any]) -> None:
        if self._delete(POD, pod["metadata"]["namespace"], pod["metadata"]["name"], "Background"):
            self.events.record(job, "Normal", "SuccessfulDelete", "Deleted pod: %s" % pod["metadata"]["name"],
                               "job-controller")

    def _delete(self, res: Resource, ns: Optional[str], name: str, policy: str) -> bool:
        try:
            self.cluster.delete(res, ns, name, {"propagationPolicy": policy})
            return True
        except ApiError as exc:
            if exc.code != 404:
                LOG.warning("deleting %s %s/%s: %s", res.kind, ns, name, exc.message)
            return False

    # ------------------------------------------------------------------------------------------
    # Garbage collector
    # ------------------------------------------------------------------------------------------
    def collect_garbage(self, uid: str) -> None:
        """Delete the dependents whose every owner is gone; drop references to owners that are gone."""
        dependents = self.store.dependents(uid)
        if not dependents:
            return
        live = self.store.uids()
        for (plural, ns, name), obj in dependents:
            res = next(r for r in RESOURCES_BY_PLURAL if r.plural == plural)
            refs = obj["metadata"].get("ownerReferences") or []
            remaining = [r for r in refs if r.get("uid") in live]
            if not remaining:
                if not obj["metadata"].get("deletionTimestamp"):
                    self._delete(res, ns or None, name, "Background")
                continue

            def strip(current: Dict[str, Any], keep: List[Dict[str, Any]] = remaining) -> None:
                current["metadata"]["ownerReferences"] = keep

            self.store.mutate(res, ns or None, name, strip)

    def foreground(self, res: Resource, owner: Dict[str, Any]) -> None:
        """Foreground deletion: delete the dependents; the owner goes once none is left."""
        dependents = self.store.dependents(owner["metadata"]["uid"])
        for (plural, ns, name), obj in dependents:
            dep_res = next(r for r in RESOURCES_BY_PLURAL if r.plural == plural)
            if not obj["metadata"].get("deletionTimestamp"):
                self._delete(dep_res, ns or None, name, "Foreground")
        if not dependents:
            self.cluster.drop_finalizer(res, owner, "foregroundDeletion")

    # ------------------------------------------------------------------------------------------
    # Namespaces, PVCs, endpoints
    # ------------------------------------------------------------------------------------------
    def sync_namespace(self, name: str) -> None:
        """A terminating namespace: delete its content; once empty, remove it."""
        ns = self.store.find(NAMESPACE, None, name)
        if ns is None or ns["status"].get("phase") != "Terminating":
            return
        left = 0
        for res in [JOB] + [r for r in RESOURCES_BY_PLURAL if r.namespaced and r.kind != "Job"]:
            items = self.store.select(res, name)
            left += len(items)
            for obj in items:
                if not obj["metadata"].get("deletionTimestamp"):
                    self._delete(res, name, obj["metadata"]["name"], "Background")
                elif res.kind not in ("Pod", "PersistentVolumeClaim") and obj["metadata"].get("finalizers"):
                    for finalizer in list(obj["metadata"]["finalizers"]):
                        if finalizer in ("orphan", "foregroundDeletion"):
                            self.cluster.drop_finalizer(res, obj, finalizer)
        if left == 0:
            self.store.remove(NAMESPACE, None, name)

    def sync_pvc(self, pvc: Dict[str, Any]) -> None:
        """Provision a docker volume for a new claim; release it once a deleted claim is no longer used."""
        meta = pvc["metadata"]
        docker = self.cluster.kubelet.docker
        volume = "k8s-standin-pvc-%s" % meta["uid"]
        if meta.get("deletionTimestamp"):
            pods = self.store.select(POD, meta["namespace"])
            used = any((v.get("persistentVolumeClaim") or {}).get("claimName") == meta["name"]
                       for p in pods if p["status"].get("phase") not in TERMINAL or p["metadata"].get("deletionTimestamp")
                       for v in p["spec"].get("volumes") or [])
            if not used:
                docker.remove_volume(volume)
                self.cluster.drop_finalizer(PVC, pvc, "kubernetes.io/pvc-protection")
            return
        if pvc["status"].get("phase") == "Bound":
            return
        docker.create_volume(volume, {LABEL: self.cluster.config.state_dir, "io.kubernetes.pvc.uid": meta["uid"],
                                      "io.kubernetes.pvc.name": meta["name"],
                                      "io.kubernetes.pvc.namespace": meta["namespace"]})

        def bind(obj: Dict[str, Any]) -> None:
            obj["spec"]["volumeName"] = "pvc-%s" % meta["uid"]
            obj["metadata"].setdefault("annotations", {}).update({"pv.kubernetes.io/bind-completed": "yes",
                                                                  "pv.kubernetes.io/bound-by-controller": "yes"})
            obj["status"] = {"phase": "Bound", "accessModes": obj["spec"].get("accessModes", []),
                             "capacity": {"storage": obj["spec"]["resources"]["requests"]["storage"]}}

        stored = self.store.mutate(PVC, meta["namespace"], meta["name"], bind)
        if stored is not None:
            self.events.record(stored, "Normal", "ProvisioningSucceeded", "Successfully provisioned volume pvc-%s" %
                               meta["uid"], "k8s-standin-provisioner")

    def sync_endpoints(self, ns: str, only: Optional[str] = None) -> None:
        """Endpoints of the selector Services in ``ns``: ready and not-ready pod addresses, target ports."""
        services = self.store.select(SERVICE, ns)
        names = {s["metadata"]["name"] for s in services}
        if only and only not in names:
            existing = self.store.find(ENDPOINTS, ns, only)
            if existing and (existing["metadata"].get("labels") or {}).get("endpoints.k8s-standin/managed") == "true":
                self.store.remove(ENDPOINTS, ns, only)
            return
        pods = self.store.select(POD, ns)
        for svc in services:
            if only and svc["metadata"]["name"] != only:
                continue
            selector = svc["spec"].get("selector")
            if not selector or svc["spec"].get("type") == "ExternalName":
                continue
            wanted = selector_requirements({"matchLabels": selector}) or []
            self._write_endpoints(svc, [p for p in pods if labels_match(wanted, p["metadata"].get("labels"))])

    def _write_endpoints(self, svc: Dict[str, Any], pods: List[Dict[str, Any]]) -> None:
        meta = svc["metadata"]
        ready, not_ready = [], []
        publish_all = bool(svc["spec"].get("publishNotReadyAddresses"))
        for pod in pods:
            ip = pod["status"].get("podIP")
            if not ip or pod["status"].get("phase") in TERMINAL:
                continue
            address = {"ip": ip, "nodeName": NODE_NAME,
                       "targetRef": {"kind": "Pod", "namespace": pod["metadata"]["namespace"],
                                     "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}
            usable = publish_all or (pod_ready(pod) and not pod["metadata"].get("deletionTimestamp"))
            (ready if usable else not_ready).append(address)
        ports = []
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str):
                target = next((p["containerPort"] for pod in pods for c in pod["spec"].get("containers") or []
                               for p in c.get("ports") or [] if p.get("name") == target), None)
            if target is None:
                continue
            entry = {"port": target, "protocol": port.get("protocol", "TCP")}
            if port.get("name"):
                entry["name"] = port["name"]
            ports.append(entry)
        subsets = []
        if (ready or not_ready) and ports:
            subset: Dict[str, Any] = {"ports": ports}
            if ready:
                subset["addresses"] = ready
            if not_ready:
                subset["notReadyAddresses"] = not_ready
            subsets.append(subset)
        labels = dict(meta.get("labels") or {})
        labels["endpoints.k8s-standin/managed"] = "true"
        existing = self.store.find(ENDPOINTS, meta["namespace"], meta["name"])
        if existing is None:
            body = {"kind": "Endpoints", "apiVersion": "v1",
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": new_uid(),
                                 "creationTimestamp": now(), "labels": labels}}
            if subsets:
                body["subsets"] = subsets
            try:
                self.store.create(ENDPOINTS, body, lambda: already_exists(ENDPOINTS, meta["name"]))
            except ApiError:
                pass
            return

        def write(obj: Dict[str, Any]) -> None:
            obj["metadata"]["labels"] = labels
            if subsets:
                obj["subsets"] = subsets
            else:
                obj.pop("subsets", None)

        self.store.mutate(ENDPOINTS, meta["namespace"], meta["name"], write)
