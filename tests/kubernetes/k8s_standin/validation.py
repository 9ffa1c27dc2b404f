"""What the API server refuses: the official OpenAPI schemas (kubernetes-validate, strict: unknown fields
are errors) and the server's own rules (names, labels, ports, quantities, references, immutable fields).

Each check returns :class:`~.model.Cause` entries with the field path a real server reports."""

import base64
import binascii
import ipaddress
import json
import os
import re
import threading
from typing import Any, Dict, List, Optional

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource as SchemaResource

from .model import (Cause, Resource, dns_label_errors, dns_subdomain_errors, field_error, label_value_errors,
                    parse_quantity, qualified_name_errors)

SCHEMA_VERSION = "1.37.0"
SCHEMA_DIR = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema",
                          "v%s-local-strict" % SCHEMA_VERSION)

_VALIDATORS: Dict[str, Any] = {}
_VALIDATORS_LOCK = threading.Lock()
_REGISTRY: Optional[Registry] = None


def _load(name: str) -> Any:
    with open(os.path.join(SCHEMA_DIR, name), encoding="utf-8") as handle:
        return json.load(handle)


def _validator(res: Resource) -> Any:
    """A cached Draft 2020-12 validator of the kind's strict schema."""
    global _REGISTRY  # pylint: disable=global-statement
    name = "%s-%s.json" % (res.kind.lower(), res.api_version.replace("/", "-"))
    with _VALIDATORS_LOCK:
        if name not in _VALIDATORS:
            if _REGISTRY is None:
                _REGISTRY = SchemaResource.from_contents(_load("_definitions.json")) @ Registry()
            schema = _load(name)
            registry = SchemaResource.from_contents(schema) @ _REGISTRY
            _VALIDATORS[name] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
        return _VALIDATORS[name]


def preload(resources: List[Resource]) -> None:
    """Build the validators up front (the definitions file is large)."""
    for res in resources:
        _validator(res)


def field_path(parts: Any) -> str:
    """``spec.containers[0].ports[0].containerPort`` from a jsonschema path."""
    out = ""
    for part in parts:
        out += "[%d]" % part if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _join(path: str, name: str) -> str:
    return "%s.%s" % (path, name) if path else name


def _schema_type_name(schema: Dict[str, Any]) -> str:
    if schema.get("format") in ("int32", "int64"):
        return schema["format"]
    kinds = schema.get("type")
    kinds = [k for k in (kinds if isinstance(kinds, list) else [kinds]) if k and k != "null"]
    return {"integer": "int", "number": "number", "boolean": "bool", "object": "object", "array": "array",
            "string": "string"}.get(kinds[0] if kinds else "", "value")


def _error_causes(error: Any) -> List[Cause]:
    path = field_path(error.absolute_path)
    value = error.instance
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties") or {})
        return [Cause(_join(path, key), "FieldValueInvalid", 'unknown field "%s"' % _join(path, key))
                for key in sorted(value) if key not in known]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        return [field_error(_join(path, missing), "FieldValueRequired", "")]
    if error.validator == "type":
        return [field_error(path, "FieldValueTypeInvalid", "must be of type %s" % _schema_type_name(error.schema),
                            json.dumps(value) if not isinstance(value, str) else value)]
    if error.validator == "enum":
        allowed = ", ".join('"%s"' % v for v in error.validator_value if v is not None)
        return [field_error(path, "FieldValueNotSupported", "supported values: %s" % allowed, value)]
    if error.validator == "oneOf":
        kinds = sorted({k for option in error.validator_value for k in option.get("type", []) if k != "null"})
        wanted = " or a ".join({"integer": "integer", "number": "number", "string": "string"}.get(k, k) for k in kinds)
        return [field_error(path, "FieldValueTypeInvalid", "must be a %s" % wanted,
                            json.dumps(value) if not isinstance(value, str) else value)]
    return [field_error(path, "FieldValueInvalid", error.message, value, show_value=False)]


def schema_causes(res: Resource, obj: Dict[str, Any]) -> List[Cause]:
    """Every schema violation of ``obj``."""
    causes: List[Cause] = []
    for error in sorted(_validator(res).iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        causes += _error_causes(error)
    return causes


# ----------------------------------------------------------------------------------------------
# The server's own rules
# ----------------------------------------------------------------------------------------------
IANA_SVC_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
CONFIG_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
CONFIG_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
                  "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"
VOLUME_SOURCES = ("emptyDir", "hostPath", "persistentVolumeClaim", "secret", "configMap", "projected", "downwardAPI",
                  "nfs", "csi", "ephemeral", "image", "iscsi", "gitRepo", "fc", "cephfs", "rbd", "glusterfs",
                  "awsElasticBlockStore", "gcePersistentDisk", "azureDisk", "azureFile", "cinder", "flexVolume",
                  "flocker", "photonPersistentDisk", "portworxVolume", "quobyte", "scaleIO", "storageos",
                  "vsphereVolume")


def _iana_errors(name: str) -> List[str]:
    errors = []
    if len(name) > 15:
        errors.append("must be no more than 15 characters")
    if not IANA_SVC_NAME_RE.match(name):
        errors.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in name:
        errors.append("must not contain consecutive hyphens")
    if not re.search("[a-z]", name):
        errors.append("must contain at least one letter (a-z)")
    return errors


def _name_errors(rule: str, name: str) -> List[str]:
    if rule == "label":
        return dns_label_errors(name)
    errors = dns_subdomain_errors(name)
    if rule == "job" and len(name) > 63:
        errors.insert(0, "must be no more than 63 characters")
    return errors


def metadata_causes(res: Resource, meta: Dict[str, Any], path: str = "metadata") -> List[Cause]:
    """Name, generateName, labels, annotations."""
    causes: List[Cause] = []
    name = meta.get("name")
    if name:
        for err in _name_errors(res.name_rule, name):
            causes.append(field_error(path + ".name", "FieldValueInvalid", err, name))
    elif path == "metadata":
        causes.append(field_error(path + ".name", "FieldValueRequired", "name or generateName is required"))
    for key, value in sorted((meta.get("labels") or {}).items()):
        for err in qualified_name_errors(key):
            causes.append(field_error(path + ".labels", "FieldValueInvalid", err, key))
        for err in label_value_errors(str(value)):
            causes.append(field_error("%s.labels" % path, "FieldValueInvalid", err, value))
    size = 0
    for key, value in sorted((meta.get("annotations") or {}).items()):
        size += len(key) + len(str(value))
        for err in qualified_name_errors(key.lower()):
            causes.append(field_error(path + ".annotations", "FieldValueInvalid", err, key))
    if size > 256 * 1024:
        causes.append(field_error(path + ".annotations", "FieldValueTooLong", "may not be more than 262144 bytes",
                                  show_value=False))
    return causes


def _quantity_causes(path: str, resources: Dict[str, Any]) -> List[Cause]:
    causes: List[Cause] = []
    parsed: Dict[str, Dict[str, Any]] = {"limits": {}, "requests": {}}
    for part in ("limits", "requests"):
        for name, value in sorted((resources.get(part) or {}).items()):
            where = "%s.%s[%s]" % (path, part, name)
            try:
                amount = parse_quantity(value)
            except ValueError as exc:
                causes.append(field_error(where, "FieldValueInvalid", str(exc), value))
                continue
            if amount < 0:
                causes.append(field_error(where, "FieldValueInvalid", "must be greater than or equal to 0", value))
            extended = "/" in name and not name.startswith("kubernetes.io/")
            if extended and amount != amount.to_integral_value():
                causes.append(field_error(where, "FieldValueInvalid", "must be an integer", value))
            parsed[part][name] = amount
    for name, amount in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        extended = "/" in name and not name.startswith("kubernetes.io/")
        if extended and limit is None:
            causes.append(field_error("%s.limits" % path, "FieldValueRequired",
                                      "Limit must be set for non overcommitable resources"))
        elif extended and limit != amount:
            causes.append(field_error("%s.requests[%s]" % (path, name), "FieldValueInvalid",
                                      "must be equal to %s limit of %s" % (name, resources["limits"][name]),
                                      resources["requests"][name]))
        elif limit is not None and amount > limit:
            causes.append(field_error("%s.requests" % path, "FieldValueInvalid",
                                      "must be less than or equal to %s limit of %s" % (name, resources["limits"][name]),
                                      resources["requests"][name]))
    return causes


def _probe_causes(path: str, probe: Dict[str, Any], ports: Dict[str, int]) -> List[Cause]:
    handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(h) is not None]
    if not handlers:
        return [field_error(path, "FieldValueRequired", "must specify a handler type")]
    if len(handlers) > 1:
        return [field_error(path + "." + handlers[1], "FieldValueForbidden", "may not specify more than 1 handler type")]
    causes: List[Cause] = []
    handler = probe[handlers[0]]
    if handlers[0] in ("httpGet", "tcpSocket"):
        port = handler.get("port")
        where = "%s.%s.port" % (path, handlers[0])
        if isinstance(port, int):
            if not 1 <= port <= 65535:
                causes.append(field_error(where, "FieldValueInvalid", PORT_RANGE_MSG, port))
        elif port not in ports:
            causes.append(field_error(where, "FieldValueInvalid", "must be a named port of the container"
                                      if not _iana_errors(str(port)) else _iana_errors(str(port))[0], port))
    for key in ("periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold"):
        if key in probe and probe[key] < 1:
            causes.append(field_error("%s.%s" % (path, key), "FieldValueInvalid",
                                      "must be greater than or equal to 1", probe[key]))
    return causes


def _env_causes(path: str, env: List[Dict[str, Any]]) -> List[Cause]:
    causes: List[Cause] = []
    for i, var in enumerate(env):
        where = "%s.env[%d]" % (path, i)
        name = var.get("name", "")
        if not name or any(not 32 <= ord(ch) <= 126 or ch == "=" for ch in name):
            causes.append(field_error(where + ".name", "FieldValueInvalid",
                                      "a valid environment variable name must consist only of printable ASCII "
                                      "characters other than '='", name))
        source = var.get("valueFrom")
        if source is None:
            continue
        kinds = [k for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef", "fileKeyRef")
                 if source.get(k) is not None]
        if var.get("value"):
            causes.append(field_error(where + ".valueFrom", "FieldValueInvalid",
                                      "may not be specified when `value` is not empty", "", show_value=False))
        if len(kinds) != 1:
            causes.append(field_error(where + ".valueFrom", "FieldValueInvalid",
                                      "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or "
                                      "`secretKeyRef`", "", show_value=False))
            continue
        ref = source[kinds[0]]
        if kinds[0] in ("secretKeyRef", "configMapKeyRef"):
            if not ref.get("name"):
                causes.append(field_error("%s.valueFrom.%s.name" % (where, kinds[0]), "FieldValueRequired", ""))
            if not CONFIG_KEY_RE.match(ref.get("key", "")):
                causes.append(field_error("%s.valueFrom.%s.key" % (where, kinds[0]), "FieldValueInvalid",
                                          CONFIG_KEY_MSG, ref.get("key", "")))
    return causes


def _container_causes(path: str, container: Dict[str, Any], volumes: Dict[str, Any]) -> List[Cause]:
    causes: List[Cause] = []
    if not container.get("image", "").strip():
        causes.append(field_error(path + ".image", "FieldValueRequired", ""))
    ports: Dict[str, int] = {}
    for j, port in enumerate(container.get("ports") or []):
        where = "%s.ports[%d]" % (path, j)
        number = port.get("containerPort", 0)
        if not 1 <= number <= 65535:
            causes.append(field_error(where + ".containerPort", "FieldValueInvalid", PORT_RANGE_MSG, number))
        if port.get("hostPort") is not None and not 1 <= port["hostPort"] <= 65535:
            causes.append(field_error(where + ".hostPort", "FieldValueInvalid", PORT_RANGE_MSG, port["hostPort"]))
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            causes.append(field_error(where + ".protocol", "FieldValueNotSupported",
                                      'supported values: "SCTP", "TCP", "UDP"', port["protocol"]))
        if port.get("name"):
            for err in _iana_errors(port["name"]):
                causes.append(field_error(where + ".name", "FieldValueInvalid", err, port["name"]))
            if port["name"] in ports:
                causes.append(field_error(where + ".name", "FieldValueDuplicate", "", port["name"]))
            ports[port["name"]] = number
    causes += _env_causes(path, container.get("env") or [])
    causes += _quantity_causes(path + ".resources", container.get("resources") or {})
    mounts = set()
    for j, mount in enumerate(container.get("volumeMounts") or []):
        where = "%s.volumeMounts[%d]" % (path, j)
        if mount.get("name") not in volumes:
            causes.append(field_error(where + ".name", "FieldValueNotFound", "", mount.get("name")))
        if not mount.get("mountPath"):
            causes.append(field_error(where + ".mountPath", "FieldValueRequired", ""))
        elif mount["mountPath"] in mounts:
            causes.append(field_error(where + ".mountPath", "FieldValueInvalid", "must be unique", mount["mountPath"]))
        mounts.add(mount.get("mountPath"))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if container.get(probe) is not None:
            causes += _probe_causes("%s.%s" % (path, probe), container[probe], ports)
    return causes


def pod_spec_causes(spec: Dict[str, Any], path: str, restart_policies=("Always", "OnFailure", "Never")) -> List[Cause]:
    """The PodSpec rules the API server enforces (for Pods and for Job templates)."""
    causes: List[Cause] = []
    volumes: Dict[str, Any] = {}
    for i, volume in enumerate(spec.get("volumes") or []):
        where = "%s.volumes[%d]" % (path, i)
        name = volume.get("name", "")
        for err in dns_label_errors(name):
            causes.append(field_error(where + ".name", "FieldValueInvalid", err, name))
        if name in volumes:
            causes.append(field_error(where + ".name", "FieldValueDuplicate", "", name))
        volumes[name] = volume
        sources = [s for s in VOLUME_SOURCES if volume.get(s) is not None]
        if not sources:
            causes.append(field_error(where, "FieldValueRequired", "must specify a volume type"))
        elif len(sources) > 1:
            causes.append(field_error(where + "." + sources[1], "FieldValueForbidden", "may not specify more than 1 volume type"))
        elif sources[0] == "hostPath" and not str(volume["hostPath"].get("path", "")).startswith("/"):
            causes.append(field_error(where + ".hostPath.path", "FieldValueInvalid", "must be an absolute path",
                                      volume["hostPath"].get("path", "")))
        elif sources[0] == "persistentVolumeClaim" and not volume["persistentVolumeClaim"].get("claimName"):
            causes.append(field_error(where + ".persistentVolumeClaim.claimName", "FieldValueRequired", ""))
        elif sources[0] == "emptyDir" and volume["emptyDir"].get("sizeLimit") is not None:
            try:
                parse_quantity(volume["emptyDir"]["sizeLimit"])
            except ValueError as exc:
                causes.append(field_error(where + ".emptyDir.sizeLimit", "FieldValueInvalid", str(exc),
                                          volume["emptyDir"]["sizeLimit"]))
    containers = spec.get("containers") or []
    if not containers:
        causes.append(field_error(path + ".containers", "FieldValueRequired", ""))
    names = set()
    for field in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(field) or []):
            where = "%s.%s[%d]" % (path, field, i)
            name = container.get("name", "")
            for err in dns_label_errors(name):
                causes.append(field_error(where + ".name", "FieldValueInvalid", err, name))
            if name in names:
                causes.append(field_error(where + ".name", "FieldValueDuplicate", "", name))
            names.add(name)
            causes += _container_causes(where, container, volumes)
    policy = spec.get("restartPolicy")
    if policy not in restart_policies:
        allowed = ", ".join('"%s"' % p for p in restart_policies)
        if policy:
            causes.append(field_error(path + ".restartPolicy", "FieldValueNotSupported", "supported values: " + allowed, policy))
        else:
            causes.append(field_error(path + ".restartPolicy", "FieldValueRequired", "valid values: " + allowed))
    for key, value in sorted((spec.get("nodeSelector") or {}).items()):
        for err in qualified_name_errors(key):
            causes.append(field_error(path + ".nodeSelector", "FieldValueInvalid", err, key))
        for err in label_value_errors(value):
            causes.append(field_error(path + ".nodeSelector", "FieldValueInvalid", err, value))
    if (spec.get("terminationGracePeriodSeconds") or 0) < 0:
        causes.append(field_error(path + ".terminationGracePeriodSeconds", "FieldValueInvalid",
                                  "must be greater than or equal to 0", spec["terminationGracePeriodSeconds"]))
    return causes


def _nonnegative(spec: Dict[str, Any], path: str, *keys: str) -> List[Cause]:
    return [field_error("%s.%s" % (path, k), "FieldValueInvalid", "must be greater than or equal to 0", spec[k])
            for k in keys if spec.get(k) is not None and spec[k] < 0]


def job_causes(job: Dict[str, Any]) -> List[Cause]:
    """batch/v1 Job rules."""
    spec = job.get("spec") or {}
    causes = _nonnegative(spec, "spec", "parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished")
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        causes.append(field_error("spec.activeDeadlineSeconds", "FieldValueInvalid", "must be greater than 0",
                                  spec["activeDeadlineSeconds"]))
    if spec.get("completionMode", "NonIndexed") not in ("NonIndexed", "Indexed"):
        causes.append(field_error("spec.completionMode", "FieldValueNotSupported",
                                  'supported values: "NonIndexed", "Indexed"', spec["completionMode"]))
    template = spec.get("template") or {}
    causes += metadata_causes(resource_kind("Pod"), template.get("metadata") or {}, "spec.template.metadata")
    causes += pod_spec_causes(template.get("spec") or {}, "spec.template.spec", ("OnFailure", "Never"))
    selector = spec.get("selector")
    if selector and not spec.get("manualSelector"):
        labels = (template.get("metadata") or {}).get("labels") or {}
        wanted = selector.get("matchLabels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            causes.append(field_error("spec.template.metadata.labels", "FieldValueInvalid",
                                      "`selector` does not match template `labels`", json.dumps(labels), show_value=False))
    return causes


def service_causes(svc: Dict[str, Any]) -> List[Cause]:
    """core/v1 Service rules."""
    spec = svc.get("spec") or {}
    causes: List[Cause] = []
    kind = spec.get("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        return [field_error("spec.type", "FieldValueNotSupported",
                            'supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"', kind)]
    if kind == "ExternalName":
        if not spec.get("externalName"):
            causes.append(field_error("spec.externalName", "FieldValueRequired", ""))
        return causes
    ports = spec.get("ports") or []
    if not ports and spec.get("clusterIP") != "None":
        causes.append(field_error("spec.ports", "FieldValueRequired", ""))
    names = set()
    for i, port in enumerate(ports):
        where = "spec.ports[%d]" % i
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            causes.append(field_error(where + ".name", "FieldValueRequired", ""))
        if name:
            for err in dns_label_errors(name):
                causes.append(field_error(where + ".name", "FieldValueInvalid", err, name))
            if name in names:
                causes.append(field_error(where + ".name", "FieldValueDuplicate", "", name))
            names.add(name)
        if not 1 <= port.get("port", 0) <= 65535:
            causes.append(field_error(where + ".port", "FieldValueInvalid", PORT_RANGE_MSG, port.get("port", 0)))
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            causes.append(field_error(where + ".protocol", "FieldValueNotSupported",
                                      'supported values: "SCTP", "TCP", "UDP"', port["protocol"]))
        target = port.get("targetPort")
        if isinstance(target, int) and not 1 <= target <= 65535:
            causes.append(field_error(where + ".targetPort", "FieldValueInvalid", PORT_RANGE_MSG, target))
        elif isinstance(target, str):
            for err in _iana_errors(target):
                causes.append(field_error(where + ".targetPort", "FieldValueInvalid", err, target))
        node_port = port.get("nodePort")
        if node_port:
            if kind == "ClusterIP":
                causes.append(field_error(where + ".nodePort", "FieldValueForbidden",
                                          "may not be used when `type` is 'ClusterIP'"))
            elif not 30000 <= node_port <= 32767:
                causes.append(field_error(where + ".nodePort", "FieldValueInvalid",
                                          "provided port is not in the valid range. The range of valid ports is "
                                          "30000-32767", node_port))
    for key, value in sorted((spec.get("selector") or {}).items()):
        for err in qualified_name_errors(key):
            causes.append(field_error("spec.selector", "FieldValueInvalid", err, key))
        for err in label_value_errors(value):
            causes.append(field_error("spec.selector", "FieldValueInvalid", err, value))
    cluster_ip = spec.get("clusterIP")
    if cluster_ip and cluster_ip != "None":
        try:
            ipaddress.ip_address(cluster_ip)
        except ValueError:
            causes.append(field_error("spec.clusterIPs[0]", "FieldValueInvalid", "must be a valid IP address", cluster_ip))
    return causes


def _data_causes(obj: Dict[str, Any], binary: bool) -> List[Cause]:
    causes: List[Cause] = []
    total = 0
    for field in ("data", "stringData", "binaryData"):
        for key, value in sorted((obj.get(field) or {}).items()):
            if not CONFIG_KEY_RE.match(key):
                causes.append(field_error("%s[%s]" % (field, key), "FieldValueInvalid", CONFIG_KEY_MSG, key))
            if field == "binaryData" or (field == "data" and binary):
                try:
                    total += len(base64.b64decode(value or "", validate=True))
                except (binascii.Error, ValueError):
                    causes.append(field_error("%s[%s]" % (field, key), "FieldValueInvalid",
                                              "illegal base64 data", show_value=False))
            else:
                total += len(str(value))
    if total > 1024 * 1024:
        causes.append(field_error("data", "FieldValueTooLong", "Too long: may not be more than 1048576 bytes",
                                  show_value=False))
    return causes


def pvc_causes(pvc: Dict[str, Any]) -> List[Cause]:
    """core/v1 PersistentVolumeClaim rules."""
    spec = pvc.get("spec") or {}
    causes: List[Cause] = []
    if not spec.get("accessModes"):
        causes.append(field_error("spec.accessModes", "FieldValueRequired", "at least 1 access mode is required"))
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if storage is None:
        causes.append(field_error("spec.resources[storage]", "FieldValueRequired", ""))
    else:
        causes += _quantity_causes("spec.resources", spec.get("resources") or {})
    return causes


def resource_kind(kind: str) -> Resource:
    """The resource of a kind (imported late to keep the module graph flat)."""
    from .model import BY_KIND  # pylint: disable=import-outside-toplevel
    return BY_KIND[kind]


def object_causes(res: Resource, obj: Dict[str, Any]) -> List[Cause]:
    """The schema, then (if the types are right) the server's own rules."""
    causes = schema_causes(res, obj)
    if causes:
        return causes
    causes = metadata_causes(res, obj.get("metadata") or {})
    if res.kind == "Pod":
        causes += pod_spec_causes(obj.get("spec") or {}, "spec")
    elif res.kind == "Job":
        causes += job_causes(obj)
    elif res.kind == "Service":
        causes += service_causes(obj)
    elif res.kind == "Secret":
        causes += _data_causes(obj, binary=True)
    elif res.kind == "ConfigMap":
        causes += _data_causes(obj, binary=False)
    elif res.kind == "PersistentVolumeClaim":
        causes += pvc_causes(obj)
    return causes


POD_UPDATE_MSG = ("pod updates may not change fields other than `spec.containers[*].image`,"
                  "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
                  "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                  "previously negative)")


def _strip_images(spec: Dict[str, Any]) -> Dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    for field in ("containers", "initContainers"):
        for container in spec.get(field) or []:
            container.pop("image", None)
    spec.pop("activeDeadlineSeconds", None)
    spec.pop("tolerations", None)
    return spec


def update_causes(res: Resource, old: Dict[str, Any], new: Dict[str, Any]) -> List[Cause]:
    """Fields a real server will not let an update change."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if res.kind == "Pod" and _strip_images(old_spec) != _strip_images(new_spec):
        return [Cause("spec", "FieldValueForbidden", "Forbidden: " + POD_UPDATE_MSG)]
    if res.kind == "Job":
        causes = []
        for key in ("selector", "completionMode", "podFailurePolicy"):
            if old_spec.get(key) != new_spec.get(key):
                causes.append(field_error("spec." + key, "FieldValueInvalid", "field is immutable",
                                          json.dumps(new_spec.get(key)), show_value=False))
        if old_spec.get("template") != new_spec.get("template") and not old_spec.get("suspend"):
            causes.append(field_error("spec.template", "FieldValueInvalid", "field is immutable",
                                      json.dumps(new_spec.get("template")), show_value=False))
        if old_spec.get("completions") != new_spec.get("completions"):
            causes.append(field_error("spec.completions", "FieldValueInvalid", "field is immutable",
                                      new_spec.get("completions")))
        return causes
    if res.kind == "Service":
        if old_spec.get("clusterIP") and new_spec.get("clusterIP") != old_spec.get("clusterIP"):
            return [field_error("spec.clusterIPs[0]", "FieldValueInvalid", "may not change once set",
                                new_spec.get("clusterIP"))]
        return []
    if res.kind in ("Secret", "ConfigMap") and old.get("immutable"):
        for field in ("data", "binaryData"):
            if old.get(field) != new.get(field):
                return [Cause(field, "FieldValueForbidden", "Forbidden: field is immutable when `immutable` is set")]
        if not new.get("immutable"):
            return [Cause("immutable", "FieldValueForbidden", "Forbidden: field is immutable when `immutable` is set")]
        return []
    if res.kind == "PersistentVolumeClaim":
        strip = [dict(s, resources=None) for s in (old_spec, new_spec)]
        if strip[0] != strip[1]:
            return [Cause("spec", "FieldValueForbidden", "Forbidden: spec is immutable after creation except "
                                                         "resources.requests and volumeAttributesClassName for bound claims")]
    return []
