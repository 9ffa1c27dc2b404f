# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kubernetes: the service runs as a ``batch/v1`` Job, reached through a Service.

In ``namespace`` the driver creates and owns, all named after the job_id:

* the Secret ``tao-<job_id>-env`` with the secret variables' values (only there: the Job
  refers to them with ``secretKeyRef``); created first, then owned by the Job, so it goes
  with the Job;
* the Job ``tao-<job_id>`` (``restartPolicy: Never``, ``backoffLimit: 0``): one pod running
  ``/bin/bash -c <inner command>``, ``nvidia.com/gpu`` limits from ``num_gpus``, ``shm_size`` as
  a memory ``emptyDir`` on ``/dev/shm``, ``volumes`` as hostPath and ``volume_claims`` as PVC
  mounts, ``node_selector``, ``tolerations``, ``imagePullSecrets``, a readiness probe on the
  service's readiness route;
* the Service ``tao-<job_id>`` (owned by the Job) selecting the Job's pod by
  the collection's own ``managed-by`` and job-id labels, which every Kubernetes version keeps (the Job's
  ``batch.kubernetes.io/job-name`` label is 1.27+ only). ``kubectl expose job`` cannot
  do this (a Job is no exposable object). It publishes not-ready addresses, so the module's
  own readiness wait reads the server's loading state and a model that fails to load ends
  the wait at once. ``service_type``: ``LoadBalancer`` (its ingress IP or host name),
  ``NodePort`` (the pod's node address) or ``ClusterIP``, reached through a local port
  forward (:mod:`kube_forward`), a process known by pid and start time like an SSH tunnel.

Every object carries ``app.kubernetes.io/managed-by: tao.inference`` and the job_id, name and
network_arch labels (the registry path and fingerprint, which are no label values, are
annotations), so ``state: absent`` by name works without the registry and orphans are found.
Only objects with those labels for the asked job_id are ever deleted. The Job goes with
``propagationPolicy: Background``, which deletes its pod too (a Job deleted without a policy
orphans it).

A start waits, within the one deadline, until the pod runs (and a LoadBalancer has its
ingress); a pod that cannot be scheduled (not enough ``nvidia.com/gpu``), an image that cannot
be pulled or a container that ended fails the start at once, with the pod's reason and its
recent events.

The ``kubernetes`` Python client is imported only when a cluster is used, so the other
platforms do not need it. Responses are read as plain JSON.
"""

import base64
import ipaddress
import json
import os
import re
import time

from urllib.parse import urlencode

from ansible.module_utils.basic import env_fallback

from ansible_collections.tao.inference.plugins.module_utils import catalog, kube_forward, procs
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import (
    LABEL_PREFIX, Driver, PlatformStatus, PortTaken, mask,
)
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free
from ansible_collections.tao.inference.plugins.module_utils.spec import parse_size
from ansible_collections.tao.inference.plugins.module_utils.ssh import _listens
from ansible_collections.tao.inference.plugins.module_utils.trust import child_environ, is_uuid, kind_problem

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB_ID = "tao.inference/job-id"
LABEL_NAME = "tao.inference/name"
LABEL_ARCH = "tao.inference/network-arch"
ANNOTATION_REGISTRY = "tao.inference/registry"
ANNOTATION_FINGERPRINT = "tao.inference/fingerprint"
ANNOTATION_NAME = "tao.inference/name"
ANNOTATION_HOST = "tao.inference/host"
CONTAINER = "server"
SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")
# Waiting reasons after which a container will not start by itself.
_STUCK = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
          "CreateContainerError", "CrashLoopBackOff", "RunContainerError")
_POLL = 0.2  # seconds between looks where watching is not allowed (at most; the first looks come sooner)
WATCH_SEGMENT = 5  # seconds one watch request lasts before the wait looks around (and watches again)
WATCH_LINE_LIMIT = 8 * 1024 * 1024  # bytes of one watch event at most
STOP_WAIT = 30  # seconds a stop waits for the pod to be gone
_FORWARD_WAIT = 20

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_CONTEXT = re.compile(r"[A-Za-z0-9_.:@/+-]{1,253}")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "toleration_seconds")


def normalize_path(path):
    """A kubeconfig path as it is recorded and compared: ``~`` expanded, absolute."""
    return os.path.abspath(os.path.expanduser(path))


def object_name(job_id):
    """The Job's and the Service's name: ``tao-<job_id>`` (a DNS label, also a label value)."""
    return "tao-%s" % job_id


def secret_name(job_id):
    return "tao-%s-env" % job_id


def _is_label_key(key):
    prefix, slash, name = key.rpartition("/")
    if slash and not (_DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253):
        return False
    return _LABEL_NAME.fullmatch(name) is not None


def namespace_problem(value):
    return None if isinstance(value, str) and _DNS_LABEL.fullmatch(value) else \
        "is not a namespace name (lower-case letters, digits and '-', at most 63)"


def context_problem(value):
    return None if isinstance(value, str) and _CONTEXT.fullmatch(value) else "is not a kubeconfig context name"


def _check_node_selector(value):
    value = value or {}
    if not isinstance(value, dict):
        raise TaoInferenceError("node_selector must be a dict of node label: value")
    for key, label in value.items():
        good_key = isinstance(key, str) and _is_label_key(key)
        if not good_key or not (isinstance(label, str) and _LABEL_VALUE.fullmatch(label)):
            raise TaoInferenceError("node_selector %r: %r is not a Kubernetes label and value (e.g. "
                                    "nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB)" % (key, label))
    return dict(sorted(value.items()))


def _check_tolerations(value):
    result = []
    for item in value or []:
        if not isinstance(item, dict) or set(item) - set(_TOLERATION_KEYS):
            raise TaoInferenceError("tolerations entry %r: give a dict with %s" % (item, ", ".join(_TOLERATION_KEYS)))
        operator = item.get("operator") or ("Equal" if item.get("value") is not None else "Exists")
        effect = item.get("effect")
        if operator not in ("Equal", "Exists") or effect not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise TaoInferenceError("tolerations entry %r: operator is Equal or Exists, effect NoSchedule, "
                                    "PreferNoSchedule or NoExecute" % (item,))
        key = item.get("key")
        if key is not None and not (isinstance(key, str) and _is_label_key(key)):
            raise TaoInferenceError("tolerations entry %r: key %r is not a label key" % (item, key))
        if operator == "Exists" and item.get("value") not in (None, ""):
            raise TaoInferenceError("tolerations entry %r: operator Exists takes no value" % (item,))
        toleration = {"operator": operator}
        if key:
            toleration["key"] = key
        if item.get("value") not in (None, ""):
            if not (isinstance(item["value"], str) and _LABEL_VALUE.fullmatch(item["value"])):
                raise TaoInferenceError("tolerations entry %r: value is not a label value" % (item,))
            toleration["value"] = item["value"]
        if effect:
            toleration["effect"] = effect
        seconds = item.get("toleration_seconds")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0 or effect != "NoExecute":
                raise TaoInferenceError("tolerations entry %r: toleration_seconds is a whole number of seconds, "
                                        "with effect NoExecute" % (item,))
            toleration["tolerationSeconds"] = seconds
        result.append(toleration)
    return result


def _check_claims(value):
    result = []
    for item in value or []:
        parts = item.split(":") if isinstance(item, str) else []
        if len(parts) not in (2, 3) or not _DNS_SUBDOMAIN.fullmatch(parts[0]) or not parts[1].startswith("/") \
                or any(c in parts[1] for c in "\n\r\t\0") or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise TaoInferenceError("volume_claims entry %r is not <claim name>:/container/path[:ro|rw]" % (item,))
        result.append(":".join(parts))
    return result


def _check_ranges(value):
    result = []
    for item in value or []:
        try:
            result.append(str(ipaddress.ip_network(item, strict=False)) if isinstance(item, str) and
                          item.strip() == item else None)
        except ValueError:
            result.append(None)
        if result[-1] is None:
            raise TaoInferenceError("source_ranges entry %r is not an address range such as 203.0.113.0/24" % (item,))
    return result


def _quantity(size):
    """A Kubernetes memory quantity for a docker-style size (16g -> 16Gi)."""
    value = parse_size(size)
    for unit, factor in (("Gi", 1024 ** 3), ("Mi", 1024 ** 2), ("Ki", 1024)):
        if value % factor == 0:
            return "%d%s" % (value // factor, unit)
    return str(value)


def _label_value(value):
    return value if isinstance(value, str) and _LABEL_VALUE.fullmatch(value) and len(value) <= 63 else None


def _when(item):
    return item.get("lastTimestamp") or item.get("eventTime") or \
        (item.get("metadata") or {}).get("creationTimestamp") or ""


class KubernetesError(TaoInferenceError):
    """The API answered with an error (``status`` is its HTTP status, 0 when it was not reached)."""

    def __init__(self, msg, status=0, reason=None):
        super(KubernetesError, self).__init__(msg)
        self.status = status
        self.reason = reason


class KubernetesDriver(Driver):
    """Driver for a Kubernetes cluster (a Job, a Service and a Secret per service)."""

    name = "kubernetes"
    OPTIONS = dict(
        kubeconfig=dict(type="raw", no_log=True, fallback=(env_fallback, ["K8S_AUTH_KUBECONFIG"])),
        context=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_CONTEXT"])),
        namespace=dict(type="str", default="default"),
        validate_certs=dict(type="bool"),
        api_timeout=dict(type="float", default=30),
        service_type=dict(type="str", choices=list(SERVICE_TYPES), default="LoadBalancer"),
        node_selector=dict(type="dict"),
        tolerations=dict(type="list", elements="dict"),
        image_pull_secret=dict(type="str", no_log=False),  # a Secret's name, not a secret
        volume_claims=dict(type="list", elements="str"),
        source_ranges=dict(type="list", elements="str"),
    )
    CONNECTION = {"kubeconfig": "kubeconfig", "context": "context", "namespace": "namespace"}
    FILE_CONNECTION = ("kubeconfig",)
    # ``server``: the API server the service was started on (recorded, never an option): a later run
    # whose kubeconfig and context reach another cluster refuses to look at or stop it there.
    CONNECTION_KINDS = {"kubeconfig": "path", "context": context_problem, "namespace": namespace_problem,
                        "server": "url"}
    ENTRY_FIELDS = {"k8s_service": "id", "k8s_pod": "id", "k8s_service_type": "id", "forward_pid": "pid",
                    "forward_start_time": "digits", "forward_spec": "text"}
    EXECUTION_BACKEND = "local-k8s"

    @classmethod
    def spec_options(cls, params, environ):
        """What shapes the Job and its Service; where it runs (kubeconfig, context, namespace) does not."""
        secret = params.get("image_pull_secret")
        if secret is not None and not (isinstance(secret, str) and _DNS_SUBDOMAIN.fullmatch(secret)):
            raise TaoInferenceError("image_pull_secret %r is not a Secret name" % (secret,))
        if params.get("host_port") is not None and (params.get("service_type") or "LoadBalancer") != "ClusterIP":
            raise TaoInferenceError("host_port is the local port of a ClusterIP service's port forward; with service_type "
                                    "%s the cluster chooses where the service is reached: remove host_port"
                                    % (params.get("service_type") or "LoadBalancer"))
        options = {"service_type": params.get("service_type") or "LoadBalancer",
                   "node_selector": _check_node_selector(params.get("node_selector")),
                   "tolerations": _check_tolerations(params.get("tolerations")),
                   "image_pull_secret": secret,
                   "volume_claims": _check_claims(params.get("volume_claims"))}
        ranges = _check_ranges(params.get("source_ranges"))
        if ranges:
            if options["service_type"] != "LoadBalancer":
                raise TaoInferenceError("source_ranges limits who reaches a LoadBalancer; service_type is %s"
                                        % options["service_type"])
            options["source_ranges"] = ranges  # absent when not given, so existing services keep their fingerprint
        if options["service_type"] not in SERVICE_TYPES:
            raise TaoInferenceError("service_type %r is not one of %s"
                                    % (options["service_type"], ", ".join(SERVICE_TYPES)))
        return options

    @classmethod
    def from_options(cls, connection, params):
        namespace = connection.get("namespace") or "default"
        problem = namespace_problem(namespace)
        if problem:
            raise TaoInferenceError("namespace %r %s" % (namespace, problem))
        if connection.get("context") is not None and context_problem(connection["context"]):
            raise TaoInferenceError("context %r %s" % (connection["context"], context_problem(connection["context"])))
        kubeconfig = connection.get("kubeconfig")
        if kubeconfig is not None and not isinstance(kubeconfig, (str, dict)):
            raise TaoInferenceError("kubeconfig must be a file path or a kubeconfig as a dict")
        if isinstance(kubeconfig, str):
            kubeconfig = normalize_path(kubeconfig)
        timeout = params.get("api_timeout") or 30
        if not 0 < timeout <= 3600:
            raise TaoInferenceError("api_timeout must be more than 0 and at most 3600 seconds, got %s" % timeout)
        return cls(kubeconfig=kubeconfig, context=connection.get("context"), namespace=namespace,
                   validate_certs=params.get("validate_certs"), api_timeout=timeout,
                   service_type=params.get("service_type") or "LoadBalancer", server=connection.get("server"))

    def __init__(self, kubeconfig=None, context=None, namespace="default", validate_certs=None, api_timeout=30,
                 service_type="LoadBalancer", server=None):
        self.kubeconfig = kubeconfig
        self.expected_server = server  # where a recorded service runs; None for a new one
        self.context = context
        self.namespace = namespace
        self.validate_certs = validate_certs
        self.api_timeout = api_timeout
        self.service_type = service_type
        self._api = None
        self._configuration = None
        self._in_cluster = False
        self._where = "the kubeconfig"
        self._server = "the cluster"
        self._context = None
        # ClusterIP services get a local port (the forward's) from the registry.
        self.uses_host_port = service_type == "ClusterIP"

    # -- the API ---------------------------------------------------------------
    def recorded_connection(self, connection):
        """Where the service runs: the kubeconfig file (a dict is never recorded: it may hold credentials),
        the context as resolved (the current one when none was given), the namespace, the API server."""
        self._ensure_api()
        recorded = dict(connection)
        recorded["namespace"] = self.namespace
        recorded["kubeconfig"] = self.kubeconfig if isinstance(self.kubeconfig, str) else None
        context = self.context or self._context
        recorded["context"] = context if context and not context_problem(context) else None
        recorded["server"] = self._server if kind_problem("url", self._server) is None else None
        return recorded

    def _ensure_api(self):
        if self._api is None:
            self._api = self._connect()
            if self.expected_server and self.expected_server != self._server:
                raise TaoInferenceError(
                    "this service runs on the cluster at %s, but %s%s reaches %s: pass the kubeconfig and context it "
                    "was started with" % (self.expected_server, self._where,
                                          " (context %s)" % self._context if self._context else "", self._server))

    def _connect(self):
        try:
            from kubernetes import client, config  # pylint: disable=import-outside-toplevel
            from kubernetes.config.config_exception import ConfigException  # pylint: disable=import-outside-toplevel
        except ImportError:
            from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel

            raise TaoInferenceError(missing_required_lib("kubernetes") + " (platform kubernetes uses the official "
                                                                         "Python client: pip install kubernetes)")
        configuration = client.Configuration()
        try:
            if isinstance(self.kubeconfig, dict):
                config.load_kube_config_from_dict(self.kubeconfig, context=self.context,
                                                  client_configuration=configuration)
                self._where = "the kubeconfig given as data"
                self._context = self.context or self.kubeconfig.get("current-context")
            elif self.kubeconfig or not self._only_in_cluster():
                path = self.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
                config.load_kube_config(config_file=self.kubeconfig, context=self.context,
                                        client_configuration=configuration)
                self._where = "kubeconfig %s" % path
                self._context = self.context or config.list_kube_config_contexts(config_file=self.kubeconfig)[1]["name"]
            else:
                config.load_incluster_config(client_configuration=configuration)
                self._in_cluster = True
                self._where = "the in-cluster service account"
        except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
            raise TaoInferenceError(
                "cannot load the Kubernetes configuration (%s): %s. Give kubeconfig (a file or a dict) and context, "
                "or run inside a pod with a service account" % (self.kubeconfig if isinstance(self.kubeconfig, str)
                                                                else "kubeconfig", exc))
        if self.validate_certs is not None:
            configuration.verify_ssl = bool(self.validate_certs)
        self._server = configuration.host
        self._configuration = configuration
        return client.ApiClient(configuration)

    def _only_in_cluster(self):
        """No kubeconfig anywhere, but a pod's service account: the in-cluster configuration."""
        default = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        return not os.path.exists(default.split(os.pathsep)[0]) and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    def _request(self, method, path, query=None, body=None, what=None, stream=False, timeout=None):
        """One API request on the client's connection pool, with the credentials its configuration
        holds (a token refreshed by an exec plugin included); the decoded JSON answer (the raw urllib3
        response with ``stream``). Errors become :class:`KubernetesError`.

        The client's typed methods build a validator per method on first use, which would cost every
        module run a few tenths of a second; the objects here are plain JSON already."""
        self._ensure_api()
        import urllib3  # pylint: disable=import-outside-toplevel

        what = what or "%s %s" % (method, path)
        headers = {"Accept": "application/json", "User-Agent": "tao.inference"}
        auth = self._configuration.auth_settings().get("BearerToken")
        if auth and auth.get("value"):
            headers[auth["key"]] = auth["value"]
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8")
        url = self._configuration.host + path + ("?" + urlencode(sorted(query.items())) if query else "")
        seconds = timeout or self.api_timeout
        try:
            response = self._api.rest_client.pool_manager.request(
                method, url, body=data, headers=headers, retries=False, preload_content=not stream,
                timeout=urllib3.Timeout(connect=min(seconds, 30), read=seconds))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesError("cannot reach the Kubernetes API at %s (%s) to %s: %s"
                                  % (self._server, self._where, what, exc))
        if not 200 <= response.status <= 299:
            text = response.data if not stream else response.read(64 * 1024)
            raise self._error(response.status, text.decode("utf-8", "replace") if text else "", what)
        if stream:
            return response
        if path.endswith("/log"):
            return response.data
        try:
            return json.loads(response.data) if response.data else {}
        except ValueError:
            raise KubernetesError("the Kubernetes API at %s answered with something that is not JSON when asked "
                                  "to %s" % (self._server, what))

    def _error(self, status, body, what):
        try:
            document = json.loads(body) if body else {}
        except (TypeError, ValueError):
            document = {}
        document = document if isinstance(document, dict) else {}
        reason = document.get("reason")
        message = document.get("message") or str(body or "")[:300]
        causes = (document.get("details") or {}).get("causes") or []
        if causes:
            message += " (%s)" % "; ".join("%s: %s" % (c.get("field"), c.get("message")) for c in causes[:8])
        if status == 401:
            hint = "the cluster refused the credentials of %s: renew them (kubeconfig, context)" % self._where
        elif status == 403:
            hint = ("the credentials of %s may not do this in namespace %s: ask for a Role that allows Jobs, "
                    "Services, Secrets, Pods, pods/log, pods/portforward and Events there" % (self._where, self.namespace))
        else:
            hint = None
        return KubernetesError("Kubernetes could not %s: %s %s%s" % (what, status, message, (". " + hint) if hint else ""),
                               status, reason)

    def _path(self, kind, name=None):
        group = "/apis/batch/v1" if kind == "jobs" else "/api/v1"
        return "%s/namespaces/%s/%s%s" % (group, self.namespace, kind, "/" + name if name else "")

    def _get(self, kind, name):
        try:
            return self._request("GET", self._path(kind, name), what="read %s %s" % (kind[:-1], name))
        except KubernetesError as exc:
            if exc.status == 404:
                return None
            raise

    def _list(self, kind, selector=None, field=None):
        query = {}
        if selector:
            query["labelSelector"] = selector
        if field:
            query["fieldSelector"] = field
        return self._request("GET", self._path(kind), query, what="list %s" % kind).get("items") or []

    def _create(self, kind, body):
        return self._request("POST", self._path(kind), body=body,
                             what="create %s %s" % (kind[:-1], body["metadata"]["name"]))

    def _delete(self, kind, name, background=False, uid=None):
        body = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if background:
            body["propagationPolicy"] = "Background"
        if uid:
            body["preconditions"] = {"uid": uid}  # that very object, not one made again under its name
        try:
            self._request("DELETE", self._path(kind, name), body=body, what="delete %s %s" % (kind[:-1], name))
            return True
        except KubernetesError as exc:
            if exc.status == 404:
                return False
            raise

    # -- objects -----------------------------------------------------------------
    @staticmethod
    def _object_labels(launch):
        spec = launch.spec
        labels = {MANAGED_BY: "tao.inference", LABEL_JOB_ID: launch.job_id,
                  LABEL_ARCH: _label_value(spec.network_arch) or "other"}
        if spec.name and _label_value(spec.name):
            labels[LABEL_NAME] = spec.name
        return labels

    @staticmethod
    def _annotations(launch):
        annotations = {ANNOTATION_REGISTRY: launch.labels.get(LABEL_PREFIX + "registry") or "",
                       ANNOTATION_FINGERPRINT: launch.labels.get(LABEL_PREFIX + "fingerprint") or ""}
        if launch.labels.get(LABEL_PREFIX + "host"):
            annotations[ANNOTATION_HOST] = launch.labels[LABEL_PREFIX + "host"]
        if launch.spec.name:
            annotations[ANNOTATION_NAME] = launch.spec.name
        return annotations

    def _metadata(self, launch, name):
        return {"name": name, "namespace": self.namespace, "labels": self._object_labels(launch),
                "annotations": self._annotations(launch)}

    def secret_object(self, launch):
        """The Secret holding the secret variables' values (``None`` when there are none)."""
        if not launch.secret_env:
            return None
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": self._metadata(launch, secret_name(launch.job_id)),
                "data": dict((name, base64.b64encode(value.encode("utf-8")).decode("ascii"))
                             for name, value in sorted(launch.secret_env.items()))}

    def job_object(self, launch):
        """The Job: one pod, never restarted, the inner command under bash, no secret value in it."""
        spec, options = launch.spec, launch.spec.platform_options
        name = object_name(launch.job_id)
        env = [{"name": key, "value": value} for key, value in sorted(launch.env.items())]
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name(launch.job_id), "key": key}}}
                for key in sorted(launch.secret_env)]
        mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
        volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(spec.shm_size)}}]
        for index, item in enumerate(spec.volumes or ()):
            parts = item.split(":")
            volumes.append({"name": "host-%d" % index, "hostPath": {"path": parts[0]}})
            mounts.append({"name": "host-%d" % index, "mountPath": parts[1],
                           "readOnly": len(parts) == 3 and parts[2] == "ro"})
        for index, item in enumerate(options.get("volume_claims") or ()):
            parts = item.split(":")
            read_only = len(parts) == 3 and parts[2] == "ro"
            volumes.append({"name": "claim-%d" % index,
                            "persistentVolumeClaim": {"claimName": parts[0], "readOnly": read_only}})
            mounts.append({"name": "claim-%d" % index, "mountPath": parts[1], "readOnly": read_only})
        container = {
            "name": CONTAINER,
            "image": spec.image,
            "command": ["/bin/bash", "-c", launch.command],
            "ports": [{"name": "http", "containerPort": catalog.CONTAINER_PORT, "protocol": "TCP"}],
            "env": env,
            "volumeMounts": mounts,
            "readinessProbe": {"httpGet": {"path": catalog.REQUEST["endpoints"]["readiness"],
                                           "port": catalog.CONTAINER_PORT},
                               "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 5},
        }
        if spec.num_gpus > 0:
            container["resources"] = {"limits": {"nvidia.com/gpu": str(spec.num_gpus)}}
        # The server needs no Kubernetes credentials: none are mounted into its pod.
        pod = {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [container],
               "volumes": volumes}
        if options.get("node_selector"):
            pod["nodeSelector"] = dict(options["node_selector"])
        if options.get("tolerations"):
            pod["tolerations"] = list(options["tolerations"])
        if options.get("image_pull_secret"):
            pod["imagePullSecrets"] = [{"name": options["image_pull_secret"]}]
        metadata = self._metadata(launch, name)
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
                "spec": {"backoffLimit": 0,
                         "template": {"metadata": {"labels": dict(metadata["labels"]),
                                                   "annotations": dict(metadata["annotations"])},
                                      "spec": pod}}}

    def service_object(self, launch, owner=None):
        """The Service in front of the Job's pod (owned by the Job when ``owner`` is given)."""
        name = object_name(launch.job_id)
        metadata = self._metadata(launch, name)
        if owner:
            metadata["ownerReferences"] = [owner]
        spec = self._service_spec(launch)
        spec.update({"selector": {MANAGED_BY: "tao.inference", LABEL_JOB_ID: launch.job_id},
                     "publishNotReadyAddresses": True,
                     "ports": [{"name": "http", "protocol": "TCP", "port": catalog.CONTAINER_PORT,
                                "targetPort": catalog.CONTAINER_PORT}]})
        return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}

    @staticmethod
    def _service_spec(launch):
        options = launch.spec.platform_options
        spec = {"type": options["service_type"]}
        if options.get("source_ranges") and options["service_type"] == "LoadBalancer":
            spec["loadBalancerSourceRanges"] = list(options["source_ranges"])
        return spec

    @staticmethod
    def _owner(job):
        return {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                "uid": job["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False}

    # -- interface -------------------------------------------------------------
    def port_scope(self, spec):
        return "local"  # the forward listens on this machine

    def port_is_free(self, spec, port):
        return port_is_free(port, addresses=["127.0.0.1"])

    def preflight(self, spec, report=True):
        """The namespace exists, the pull secret is there (nvcr.io images need one); with ``report`` the
        GPUs the nodes offer. Changes nothing."""
        facts = {"namespace": self.namespace}
        try:
            self._request("GET", "/api/v1/namespaces/%s" % self.namespace, what="read namespace %s" % self.namespace)
        except KubernetesError as exc:
            if exc.status == 404:
                raise TaoInferenceError("namespace %s does not exist in the cluster of %s; create it (kubectl create "
                                        "namespace %s) or choose another namespace"
                                        % (self.namespace, self._where, self.namespace))
            if exc.status != 403:  # a user limited to the namespace may not read it: the start will tell
                raise
        pull_secret = spec.platform_options.get("image_pull_secret")
        if spec.image.startswith("nvcr.io/") and not pull_secret:
            raise TaoInferenceError(
                "image %s comes from nvcr.io, which needs image_pull_secret: create a docker-registry Secret in "
                "namespace %s (kubectl create secret docker-registry ngc-secret --docker-server=nvcr.io "
                "--docker-username='$oauthtoken' --docker-password=<NGC API key>) and set image_pull_secret to its "
                "name" % (spec.image, self.namespace))
        if pull_secret:
            found = self._get("secrets", pull_secret)
            if found is None:
                names = [s["metadata"]["name"] for s in self._list("secrets")
                         if s.get("type") in ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")]
                raise TaoInferenceError("image_pull_secret %s is not in namespace %s; pull secrets there: %s"
                                        % (pull_secret, self.namespace, ", ".join(sorted(names)) or "none"))
            facts["image_pull_secret"] = pull_secret
        if not report:
            return facts
        facts["server"] = self._server
        try:
            nodes = self._request("GET", "/api/v1/nodes", what="list nodes").get("items") or []
        except KubernetesError as exc:
            if exc.status != 403:
                raise
            facts["allocatable_gpus"] = None
            facts["warnings"] = ["cannot list nodes (%s): the GPUs the cluster offers are unknown" % exc.msg]
            return facts
        gpus = {}
        for node in nodes:
            count = ((node.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu") or "0"
            try:
                gpus[node["metadata"]["name"]] = int(count)
            except (TypeError, ValueError):
                gpus[node["metadata"]["name"]] = 0
        facts["nodes"] = len(nodes)
        facts["allocatable_gpus"] = gpus
        if not any(gpus.values()):
            facts["warnings"] = ["no node reports allocatable nvidia.com/gpu: a service with num_gpus > 0 cannot be "
                                 "scheduled (is the NVIDIA device plugin or GPU operator installed?)"]
        elif spec.num_gpus > max(gpus.values()):
            facts["warnings"] = ["num_gpus %d is more than any node offers (at most %d)"
                                 % (spec.num_gpus, max(gpus.values()))]
        return facts

    def start(self, launch):
        """Create the Secret, the Job and the Service; wait until the pod runs and the Service has an
        address, within ``launch.timeout``."""
        deadline = time.monotonic() + launch.timeout
        name = object_name(launch.job_id)
        secret = self.secret_object(launch)
        if secret is not None:
            # First, so the pod finds it; the Job owns it once the Job exists (it goes with the Job).
            created = self._create_ours("secrets", secret, launch.job_id)
            secret["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        job = self._create_ours("jobs", self.job_object(launch), launch.job_id)
        fields = {"platform_job_id": name, "k8s_service": name, "k8s_service_type": self.service_type}
        launch.on_submitted(fields)
        owner = self._owner(job)
        if secret is not None and not created["metadata"].get("ownerReferences"):
            secret["metadata"]["ownerReferences"] = [owner]
            self._request("PUT", self._path("secrets", secret_name(launch.job_id)), body=secret,
                          what="give Secret %s to its Job" % secret_name(launch.job_id))
        self._create_ours("services", self.service_object(launch, owner), launch.job_id)
        pod = self._wait_running(job, launch, deadline)
        fields["k8s_pod"] = pod["metadata"]["name"]
        if self.service_type == "ClusterIP":
            fields.update(self._open_forward(pod["metadata"]["name"], launch.host_port, list(launch.secret_env)))
            fields["host_port"] = launch.host_port
            fields["host_url"] = "http://127.0.0.1:%d" % launch.host_port
        else:
            fields["host_url"] = self._service_url(name, pod, deadline, launch)
        return fields

    def _create_ours(self, kind, body, job_id):
        """Create ``body``; when it is there already and ours (a start tried again with another local
        port, after PortTaken), take the one there."""
        try:
            return self._create(kind, body)
        except KubernetesError as exc:
            if exc.status != 409:
                raise
            found = self._get(kind, body["metadata"]["name"])
            if found is None or not self._ours(found, job_id):
                raise
            return found

    @staticmethod
    def _selector(job_id):
        return "%s=tao.inference,%s=%s" % (MANAGED_BY, LABEL_JOB_ID, job_id)

    @staticmethod
    def _owned_pods(pods, job_uid):
        """The pods a Job with uid ``job_uid`` made (others may copy its labels, never its uid)."""
        return [p for p in pods if isinstance(p, dict) and any(
            ref.get("uid") == job_uid and ref.get("kind") == "Job"
            for ref in (p.get("metadata") or {}).get("ownerReferences") or [])]

    def _pod_of(self, job_id, job=None):
        """The newest pod of ``job_id``'s Job (None when it has none, or the Job is gone)."""
        job = job or self._get("jobs", object_name(job_id))
        if job is None or not self._ours(job, job_id):
            return None
        pods = self._owned_pods(self._list("pods", selector=self._selector(job_id)), job["metadata"].get("uid"))
        pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")] or pods
        return sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")[-1] \
            if pods else None

    def _events(self, kind, name, secrets, limit=5):
        try:
            items = self._list("events", field="involvedObject.kind=%s,involvedObject.name=%s" % (kind, name))
        except KubernetesError:
            return []
        items.sort(key=_when)
        return ["%s %s: %s" % (e.get("type") or "", e.get("reason") or "",
                               mask(" ".join((e.get("message") or "").split()), secrets))
                for e in items[-limit:]]

    def _pod_problem(self, pod, secrets):
        """Why ``pod`` will not run (a sentence), or None while it may still."""
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and \
                    condition.get("reason") == "Unschedulable":
                return "pod %s cannot be scheduled: %s" % (name, mask(condition.get("message") or "no node fits",
                                                                      secrets))
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            waiting, ended = state.get("waiting") or {}, state.get("terminated")
            if waiting.get("reason") in _STUCK:
                return "pod %s: container %s is %s: %s" % (
                    name, container.get("name"), waiting["reason"], mask(waiting.get("message") or "", secrets))
            if ended:
                return "pod %s: container %s ended (exit code %s, %s)%s" % (
                    name, container.get("name"), ended.get("exitCode"), ended.get("reason") or "",
                    (": " + mask(ended["message"], secrets)) if ended.get("message") else "")
        if status.get("phase") in ("Failed", "Succeeded"):
            why = status.get("message") or status.get("reason") or ""
            return "pod %s %s: %s" % (name, status["phase"].lower(), mask(why, secrets))
        return None

    def _fail(self, launch, problem, pod_name):
        events = self._events("Pod", pod_name, launch.secret_env) if pod_name else []
        logs = self._pod_logs(pod_name, 15, launch.secret_env) if pod_name else ""
        text = problem.rstrip(".") + "."
        if events:
            text += " Recent events: " + " | ".join(events)
        if logs.strip():
            text += " Last container log lines:\n" + logs.strip()
        raise TaoInferenceError(text, job_id=launch.job_id)

    def _watch(self, kind, check, deadline, selector=None, name=None, between=None):
        """Follow objects of ``kind`` (one ``name``, or a label ``selector``) as they change, until
        ``check(object)`` returns something other than None (returned) or ``deadline`` passes (None).

        A watch sees a change the moment it happens, where polling would see it up to a poll later,
        and costs the API server one request per segment instead of one per poll. Segments last at most
        :data:`WATCH_SEGMENT` seconds; ``between()`` runs after each one that ended without an answer.
        Where watching is not allowed (403, 405), it polls instead."""
        query = {"watch": "true"}
        if name:
            query["fieldSelector"] = "metadata.name=%s" % name
        if selector:
            query["labelSelector"] = selector
        version = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            segment = max(1, int(min(remaining, WATCH_SEGMENT) + 0.999))
            query["timeoutSeconds"] = str(segment)
            if version:
                query["resourceVersion"] = version
            else:
                query.pop("resourceVersion", None)
            try:
                response = self._request("GET", self._path(kind), dict(query), stream=True, timeout=segment + 5,
                                         what="watch %s" % kind)
            except KubernetesError as exc:
                if exc.status in (403, 405):
                    return self._poll(kind, check, deadline, selector, name, between)
                if exc.status == 410:
                    version = None
                    continue
                raise
            try:
                found, version = self._follow(response, check, deadline, version)
            finally:
                response.release_conn()
            if found is not None:
                return found
            if between is not None:
                between()

    def _follow(self, response, check, deadline, version):
        """Read one watch stream: ``(answer or None, last resourceVersion)``."""
        import urllib3  # pylint: disable=import-outside-toplevel

        buffer = b""
        try:
            for chunk in response.stream(16 * 1024):
                buffer += chunk
                if len(buffer) > WATCH_LINE_LIMIT:
                    return None, None  # no event is that large: watch again, from a new list
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if not isinstance(event, dict) or not isinstance(event.get("object") or {}, dict):
                        continue
                    item = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        return None, None if item.get("code") == 410 else version
                    version = (item.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "DELETED":
                        found = check(item)
                        if found is not None:
                            return found, version
                if time.monotonic() >= deadline:
                    return None, version
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            pass  # the stream ended or broke: the caller watches again from ``version``
        return None, version

    def _poll(self, kind, check, deadline, selector, name, between):
        sleep = 0.05
        while time.monotonic() < deadline:
            items = [self._get(kind, name)] if name else self._list(kind, selector=selector)
            for item in items:
                found = check(item) if item else None
                if found is not None:
                    return found
            if between is not None:
                between()
            time.sleep(min(sleep, max(0.0, deadline - time.monotonic())))
            sleep = min(sleep * 2, _POLL)
        return None

    def _wait_running(self, job, launch, deadline):
        """The Job's pod once it runs with an IP; fails at once when it cannot run."""
        job_name, job_uid = job["metadata"]["name"], job["metadata"].get("uid")
        last = {}

        def check(pod):
            if not self._owned_pods([pod], job_uid):
                return None  # labelled like ours, but not made by our Job
            last["pod"] = pod
            problem = self._pod_problem(pod, launch.secret_env)
            if problem:
                self._fail(launch, problem, pod["metadata"]["name"])
            status = pod.get("status") or {}
            if status.get("phase") == "Running" and status.get("podIP"):
                return pod
            return None

        def job_still_there():
            if last.get("pod"):
                return
            job = self._get("jobs", job_name)
            if job is None:
                raise TaoInferenceError("Job %s disappeared while it started (deleted by someone else?)"
                                        % job_name, job_id=launch.job_id)
            for condition in (job.get("status") or {}).get("conditions") or []:
                if condition.get("type") == "Failed" and condition.get("status") == "True":
                    self._fail(launch, "Job %s failed: %s %s" % (job_name, condition.get("reason"),
                                                                 condition.get("message") or ""), None)
            failed = [e for e in self._events("Job", job_name, launch.secret_env) if "FailedCreate" in e]
            if failed:
                self._fail(launch, "Job %s cannot create its pod: %s" % (job_name, failed[-1]), None)

        pod = self._watch("pods", check, deadline, selector=self._selector(launch.job_id), between=job_still_there)
        if pod is None:
            pod = last.get("pod")
            where = pod["metadata"]["name"] if pod else None
            phase = ((pod or {}).get("status") or {}).get("phase") or "no pod yet"
            self._fail(launch, "Job %s was not running within wait_timeout (pod %s: %s)"
                       % (job_name, where or "-", phase), where)
        return pod

    def _service_url(self, name, pod, deadline, launch):
        def check(service):
            port = self._service_port(service)
            if self.service_type == "NodePort":
                host = (pod.get("status") or {}).get("hostIP")
                if host and port.get("nodePort"):
                    return "http://%s:%d" % (_url_host(host), port["nodePort"])
                return None
            ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            for item in ingress:
                host = item.get("ip") or item.get("hostname")
                if host:
                    return "http://%s:%d" % (_url_host(host), port.get("port") or catalog.CONTAINER_PORT)
            return None

        def still_there():
            if self._get("services", name) is None:
                raise TaoInferenceError("Service %s disappeared while the service started" % name,
                                        job_id=launch.job_id)

        url = self._watch("services", check, deadline, name=name, between=still_there)
        if url is None:
            what = "node port" if self.service_type == "NodePort" else "load balancer address"
            self._fail(launch, "Service %s got no %s within wait_timeout; a cluster without a load balancer "
                       "needs service_type NodePort or ClusterIP" % (name, what), None)
        return url

    @staticmethod
    def _service_port(service):
        ports = (service.get("spec") or {}).get("ports") or [{}]
        return ports[0]

    # -- the local forward (ClusterIP) ------------------------------------------
    def _forward_settings(self, pod, local_port):
        return {"kubeconfig": self.kubeconfig, "context": self.context or self._context,
                "in_cluster": self._in_cluster, "validate_certs": self.validate_certs, "namespace": self.namespace,
                "pod": pod, "port": catalog.CONTAINER_PORT, "local_port": local_port}

    def _open_forward(self, pod, local_port, secret_names):
        """Start the forward process (its environment without any secret: it lives as long as the service).
        Whatever stops it from listening (an error, a timeout, a signal) stops the process too."""
        if not port_is_free(local_port, addresses=["127.0.0.1"]):
            raise PortTaken(local_port)
        spec = kube_forward.forward_spec(local_port, self.namespace, pod, catalog.CONTAINER_PORT)
        proc = errors = None
        try:
            proc, errors = kube_forward.spawn(self._forward_settings(pod, local_port),
                                              child_environ(secret_names=secret_names))
            try:
                failed = kube_forward.wait_listening(proc, errors, _listens, local_port, _FORWARD_WAIT)
            except TimeoutError:
                failed = "it was not listening after %ss" % _FORWARD_WAIT
            if failed is not None:
                if "Address already in use" in failed:
                    raise PortTaken(local_port)
                raise TaoInferenceError("the port forward %s failed: %s" % (spec, failed.splitlines()[-1]))
            _state, started = procs.stat_of(proc.pid)
            return {"forward_pid": proc.pid, "forward_start_time": started, "forward_spec": spec}
        except BaseException:
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            raise
        finally:
            if errors is not None:
                errors.close()

    def _forward_of(self, entry):
        """``(pid, start time, spec)`` of the entry's forward, the spec made from its validated fields (a
        registry entry never says which process command line counts as ours), or None."""
        if entry.get("k8s_service_type") != "ClusterIP" or not entry.get("forward_pid") or \
                not entry.get("k8s_pod") or not isinstance(entry.get("host_port"), int):
            return None
        spec = kube_forward.forward_spec(entry["host_port"], self.namespace, entry["k8s_pod"], catalog.CONTAINER_PORT)
        return entry["forward_pid"], entry.get("forward_start_time"), spec

    def _forward_alive(self, entry):
        forward = self._forward_of(entry)
        return forward is not None and kube_forward.alive(*forward)

    def _close_forward(self, entry):
        """Stop the entry's forward, and any other forward of ours to a pod of its Job (one whose entry was
        lost): by pid, start time and command line, never by name."""
        closed = False
        forward = self._forward_of(entry)
        if forward is not None and kube_forward.alive(*forward):
            closed = procs.terminate(forward[0], forward[1])
        if is_uuid(entry.get("job_id")):
            for found in kube_forward.find(self.namespace, object_name(entry["job_id"]) + "-"):
                closed = procs.terminate(found[0], found[1]) or closed
        return closed

    def release(self, entry):
        return self._close_forward(entry)

    def repair(self, entry):
        if entry.get("k8s_service_type") != "ClusterIP" or self._forward_alive(entry):
            return {}
        self._close_forward(entry)
        pod = self._pod_of(entry["job_id"])
        if pod is None:
            raise TaoInferenceError("service %s has no pod to forward to" % entry["job_id"])
        fields = self._open_forward(pod["metadata"]["name"], entry["host_port"], entry.get("secret_env") or [])
        fields["k8s_pod"] = pod["metadata"]["name"]
        return fields

    # -- looking and stopping ------------------------------------------------------
    def status(self, entry):
        name = object_name(entry["job_id"])
        job = self._get("jobs", name)
        if job is None or not self._ours(job, entry["job_id"]):
            return PlatformStatus(PlatformStatus.MISSING, "no Job %s of tao.inference in namespace %s"
                                  % (name, self.namespace))
        pod = self._pod_of(entry["job_id"], job)
        extra = {"k8s_namespace": self.namespace}
        if pod is None:
            return PlatformStatus(PlatformStatus.PENDING, "Job %s has no pod yet" % name, extra=extra,
                                  labels=self._labels_of(job), ident=name)
        status = pod.get("status") or {}
        phase = status.get("phase") or "Unknown"
        extra.update({"k8s_pod": pod["metadata"]["name"], "k8s_pod_phase": phase})
        problem = self._pod_problem(pod, {})
        exit_code = None
        for container in status.get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated")
            if ended:
                exit_code = ended.get("exitCode")
        if problem or phase in ("Failed", "Succeeded"):
            state = PlatformStatus.EXITED
        elif phase == "Running":
            state = PlatformStatus.RUNNING
        else:
            state = PlatformStatus.PENDING
        broken = None
        if state == PlatformStatus.RUNNING and self._forward_of(entry) is not None and not self._forward_alive(entry):
            broken = "forward_down"
        return PlatformStatus(state, problem or "pod %s %s" % (pod["metadata"]["name"], phase), exit_code,
                              self._labels_of(job), name, extra=extra, broken=broken)

    def _pod_logs(self, pod_name, lines, secrets):
        """The last ``lines`` of the server container's log, secrets masked ("" when it cannot be read:
        logs only explain a failure, they never fail on their own)."""
        try:
            data = self._request("GET", self._path("pods", pod_name) + "/log",
                                 {"container": CONTAINER, "tailLines": int(lines)}, what="read the log of pod %s" % pod_name)
        except TaoInferenceError:
            return ""
        return mask(data[-64 * 1024:].decode("utf-8", "replace"), secrets)

    def logs(self, entry, lines=40, secrets=None):
        """The log of the Job's own pod (found through the Job, never named by the registry entry)."""
        try:
            pod = self._pod_of(entry["job_id"])
        except TaoInferenceError:
            return ""
        return self._pod_logs(pod["metadata"]["name"], lines, secrets) if pod else ""

    @staticmethod
    def _ours(document, job_id):
        labels = (document.get("metadata") or {}).get("labels") or {} if isinstance(document, dict) else {}
        return labels.get(MANAGED_BY) == "tao.inference" and labels.get(LABEL_JOB_ID) == job_id

    @staticmethod
    def _labels_of(document):
        """The object's labels and annotations as the service layer reads them (``tao.inference.*``)."""
        metadata = document.get("metadata") or {}
        labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
        result = {LABEL_PREFIX + "managed-by": labels.get(MANAGED_BY), LABEL_PREFIX + "job_id": labels.get(LABEL_JOB_ID),
                  LABEL_PREFIX + "network_arch": labels.get(LABEL_ARCH), "platform_job_id": metadata.get("name")}
        for key, annotation in (("registry", ANNOTATION_REGISTRY), ("fingerprint", ANNOTATION_FINGERPRINT),
                                ("name", ANNOTATION_NAME), ("host", ANNOTATION_HOST)):
            if annotations.get(annotation):
                result[LABEL_PREFIX + key] = annotations[annotation]
        return result

    def stop(self, entry):
        """Delete the Job (its pod with it), its Service and its Secret, each by the name the job_id gives
        it, only when it carries our labels for this job_id, and only that very object (its uid as a
        precondition). True when something was there. Waits (a while) until the pod is gone."""
        job_id = entry["job_id"]
        if not is_uuid(job_id):
            return False
        self._close_forward(entry)
        found = False
        job = self._get("jobs", object_name(job_id))
        for kind, name in (("jobs", object_name(job_id)), ("services", object_name(job_id)),
                           ("secrets", secret_name(job_id))):
            item = job if kind == "jobs" else self._get(kind, name)
            if item is not None and self._ours(item, job_id):
                found = self._delete(kind, name, background=(kind == "jobs"),
                                     uid=item["metadata"].get("uid")) or found
        # Its pods go with the Job; one left behind (its Job deleted elsewhere without a policy) goes too.
        deadline = time.monotonic() + STOP_WAIT
        while True:
            pods = [p for p in self._list("pods", selector=self._selector(job_id)) if self._ours(p, job_id)]
            if job is not None:
                pods = self._owned_pods(pods, job["metadata"].get("uid")) or pods
            if not pods:
                return found
            for pod in pods:
                if not (pod.get("metadata") or {}).get("deletionTimestamp"):
                    found = self._delete("pods", pod["metadata"]["name"], uid=pod["metadata"].get("uid")) or found
            if time.monotonic() >= deadline:
                return True  # being deleted: the cluster finishes it
            time.sleep(0.25)

    def find(self, name=None):
        found = []
        for job in self._list("jobs", selector="%s=tao.inference" % MANAGED_BY):
            if not isinstance(job, dict):
                continue
            labels = self._labels_of(job)
            if name is not None and labels.get(LABEL_PREFIX + "name") != name:
                continue
            if not is_uuid(labels.get(LABEL_PREFIX + "job_id")):
                continue
            found.append(PlatformStatus(PlatformStatus.RUNNING, "Job %s" % job["metadata"]["name"], labels=labels,
                                        ident=job["metadata"]["name"]))
        return found

    def close(self):
        if self._api is not None:
            try:
                self._api.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._api = None


def _url_host(name):
    return "[%s]" % name if ":" in name else name
