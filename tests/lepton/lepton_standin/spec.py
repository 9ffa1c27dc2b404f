"""What the stand-in checks a request body against: the ``leptonai`` package's own pydantic models
(strict: a wrong type is refused, never coerced; a field the model does not have is refused too, where
the models themselves would drop it silently), then the API's own rules (names, references, tokens).

Errors are :class:`ApiError`, answered as ``{"code": ..., "message": ...}`` the way the API answers."""

import json
import re
from typing import Any, Dict, List, Optional, Tuple, Type

from pydantic import BaseModel, ValidationError, TypeAdapter

from leptonai.api.v2.types.dedicated_node_group import DedicatedNodeGroup, Node
from leptonai.api.v2.types.deployment import LeptonDeployment
from leptonai.api.v2.types.events import LeptonEvent
from leptonai.api.v2.types.readiness import ReadinessIssue
from leptonai.api.v2.types.replica import Replica
from leptonai.api.v2.types.secret import SecretItem
from leptonai.api.v2.types.shape import Shape
from leptonai.api.v2.types.termination import DeploymentTerminations
from leptonai.api.v2.types.workspace import WorkspaceInfo

# Deployment (endpoint) and job names, as the API takes them: a lowercase letter first, lowercase
# letters, digits and '-' after, no '-' at the end, 36 characters at most (leptonai's job validation).
NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,34}[a-z0-9])?")
ENV_NAME = re.compile(r"[A-Za-z._-][A-Za-z0-9._-]*")  # leptonai spec_utils: letters, digits, '.', '_', '-', no digit first
SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
RESERVED_ENV = frozenset(("LEPTON_WORKSPACE_ID", "LEPTON_DEPLOYMENT_NAME", "LEPTON_JOB_NAME",
                          "LEPTON_RESOURCE_ACCELERATOR_TYPE", "LEPTON_WORKSPACE_ORIGIN_URL"))
WORKSPACE_TOKEN_REF = "WORKSPACE_TOKEN"


class ApiError(Exception):
    """An answer other than 2xx: ``status``, a ``code`` and a ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> Dict[str, str]:
        """The JSON the API answers with."""
        return {"code": self.code, "message": self.message}


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidRequest", message)


def _path(loc: Tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += "[%d]" % part if isinstance(part, int) else ("." if text else "") + str(part)
    return text or "<body>"


def _unknown(data: Any, dumped: Any, path: str) -> List[str]:
    """Keys of ``data`` that the validated model did not keep (fields the model does not have)."""
    found = []
    if isinstance(data, dict) and isinstance(dumped, dict):
        for key, value in data.items():
            where = "%s.%s" % (path, key) if path else key
            if key not in dumped:
                found.append(where)
            else:
                found += _unknown(value, dumped[key], where)
    elif isinstance(data, list) and isinstance(dumped, list):
        for index, (value, kept) in enumerate(zip(data, dumped)):
            found += _unknown(value, kept, "%s[%d]" % (path, index))
    return found


def parse(raw: bytes) -> Any:
    """The request body as JSON, or a 400."""
    try:
        return json.loads(raw.decode("utf-8") if raw else "null")
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid("the request body is not JSON: %s" % exc) from None


def check(model: Any, data: Any, what: str) -> Any:
    """``data`` validated strictly against ``model`` (a pydantic model class or a type such as
    ``List[SecretItem]``); refuses unknown fields with their paths. Returns the validated value."""
    adapter = TypeAdapter(model)
    try:
        value = adapter.validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        problems = ["%s: %s" % (_path(error["loc"]), error["msg"]) for error in exc.errors(include_url=False)]
        model_name = getattr(model, "__name__", str(model))
        raise invalid("%s does not match leptonai's %s: %s" % (what, model_name, "; ".join(problems[:10]))) from None
    dumped = adapter.dump_python(value, by_alias=True, exclude_unset=True, mode="json")
    unknown = _unknown(data, dumped, "")
    if unknown:
        model_name = getattr(model, "__name__", str(model))
        raise invalid("%s has fields leptonai's %s does not know: %s" % (what, model_name, ", ".join(unknown[:10])))
    return value


def check_deployment(data: Any) -> LeptonDeployment:
    """A deployment create body: leptonai's LeptonDeployment, plus the fields the API requires."""
    if not isinstance(data, dict):
        raise invalid("a deployment is a JSON object")
    model = check(LeptonDeployment, data, "the deployment")
    metadata, spec = data.get("metadata") or {}, data.get("spec") or {}
    name = metadata.get("name") or metadata.get("id")
    if not name:
        raise invalid("metadata.name is required")
    if metadata.get("id") and metadata.get("name") and metadata["id"] != metadata["name"]:
        raise invalid("metadata.id %r must equal metadata.name %r" % (metadata["id"], metadata["name"]))
    if not NAME.fullmatch(name):
        raise invalid("deployment name %r: a lowercase letter first, then lowercase letters, digits and '-' (not at "
                      "the end), at most 36 characters" % name)
    container = spec.get("container") or {}
    if not container.get("image"):
        raise invalid("spec.container.image is required")
    for key, value in (metadata.get("labels") or {}).items():
        if not re.fullmatch(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", key) \
                or not re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", value):
            raise invalid("metadata.labels %r: %r is not a label and value (Kubernetes label syntax)" % (key, value))
    seen = set()
    for index, env in enumerate(spec.get("envs") or []):
        where = "spec.envs[%d]" % index
        if not ENV_NAME.fullmatch(env["name"]) or env["name"] in RESERVED_ENV:
            raise invalid("%s.name %r is not a usable environment variable name (reserved: %s)"
                          % (where, env["name"], ", ".join(sorted(RESERVED_ENV))))
        if env["name"] in seen:
            raise invalid("%s.name %s is given twice" % (where, env["name"]))
        seen.add(env["name"])
        if (env.get("value") is None) == (env.get("value_from") is None):
            raise invalid("%s: give exactly one of value and value_from" % where)
        if env.get("value_from") is not None and not env["value_from"].get("secret_name_ref"):
            raise invalid("%s.value_from.secret_name_ref is required" % where)
    tokens = spec.get("api_tokens")
    for index, token in enumerate(tokens or []):
        where = "spec.api_tokens[%d]" % index
        if (token.get("value") is None) == (token.get("value_from") is None):
            raise invalid("%s: give exactly one of value and value_from" % where)
        if token.get("value") == "***":
            raise invalid("%s.value: '***' is a redacted API-token placeholder, not a usable token" % where)
        if token.get("value") is not None and not token["value"]:
            raise invalid("%s.value is empty" % where)
        if token.get("value_from") is not None and token["value_from"]["token_name_ref"] != WORKSPACE_TOKEN_REF:
            raise invalid("%s.value_from.token_name_ref %r: the only token reference is %s"
                          % (where, token["value_from"]["token_name_ref"], WORKSPACE_TOKEN_REF))
    if spec.get("allow_unauthenticated_access") is True and tokens:
        raise invalid("allow_unauthenticated_access=true cannot be combined with API tokens")
    ports = [p["container_port"] for p in container.get("ports") or []]
    liveness = ((spec.get("health") or {}).get("liveness") or {})
    if liveness.get("tcp") and liveness["tcp"]["port"] not in (ports or [8080]):
        raise invalid("spec.health.liveness.tcp.port %d is not a port of the container (%s)"
                      % (liveness["tcp"]["port"], ", ".join(map(str, ports or [8080]))))
    requirement = spec.get("resource_requirement") or {}
    low, high = requirement.get("min_replicas"), requirement.get("max_replicas")
    if low is not None and high is not None and low > high:
        raise invalid("resource_requirement.min_replicas %d is more than max_replicas %d" % (low, high))
    for index, mount in enumerate(spec.get("mounts") or []):
        if not str(mount.get("mount_path", "")).startswith("/"):
            raise invalid("spec.mounts[%d].mount_path must be an absolute path" % index)
    return model


def check_secrets(data: Any) -> List[SecretItem]:
    """A user-secrets create body: a list of leptonai SecretItem, each with a value."""
    if not isinstance(data, list) or not data:
        raise invalid("give a non-empty list of secrets")
    items = check(List[SecretItem], data, "the secrets")
    names = set()
    for index, item in enumerate(data):
        if not SECRET_NAME.fullmatch(item["name"]) or item["name"].lower().startswith("lepton_"):
            raise invalid("secrets[%d].name %r: letters, digits, '.', '_' and '-'; names starting with LEPTON_ are "
                          "reserved" % (index, item["name"]))
        if not item.get("value"):
            raise invalid("secrets[%d] (%s) has no value" % (index, item["name"]))
        if item["name"] in names:
            raise invalid("secrets[%d]: %s is given twice" % (index, item["name"]))
        names.add(item["name"])
    return items


def check_pull_secret(data: Any) -> Dict[str, Any]:
    """An image pull secret (leptonai has no model for it; the API's shape:
    ``{"metadata": {"name"}, "spec": {"registry_server", "username", "password", "email"}}``)."""
    if not isinstance(data, dict) or set(data) - {"metadata", "spec"}:
        raise invalid("an image pull secret is {metadata: {name}, spec: {registry_server, username, password, email}}")
    metadata, spec = data.get("metadata"), data.get("spec")
    if not isinstance(metadata, dict) or set(metadata) != {"name"} or not isinstance(metadata["name"], str) \
            or not NAME.fullmatch(metadata["name"]):
        raise invalid("image pull secret metadata.name: a lowercase name (letters, digits and '-')")
    allowed = {"registry_server", "username", "password", "email"}
    if not isinstance(spec, dict) or set(spec) - allowed or not all(isinstance(v, str) for v in spec.values()) \
            or not all(spec.get(k) for k in ("registry_server", "username", "password")):
        raise invalid("image pull secret spec: registry_server, username and password (strings), email optional")
    return data


RESPONSES: Dict[str, Type[BaseModel]] = {
    "deployment": LeptonDeployment, "replica": Replica, "event": LeptonEvent, "node_group": DedicatedNodeGroup,
    "node": Node, "shape": Shape, "secret": SecretItem, "workspace": WorkspaceInfo,
}
ROOTS: Dict[str, Any] = {"readiness": ReadinessIssue, "termination": DeploymentTerminations}


def conforms(kind: str, value: Any) -> Optional[str]:
    """Why an answer of ``kind`` (one object, or a list of them) would not load in the leptonai client, or None."""
    try:
        if kind in ROOTS:
            ROOTS[kind].model_validate(value)
        elif isinstance(value, list):
            for item in value:
                RESPONSES[kind].model_validate(item)
        else:
            RESPONSES[kind].model_validate(value)
    except ValidationError as exc:
        return str(exc)
    return None
