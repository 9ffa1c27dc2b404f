"""The resource table, API errors, timestamps, names, selectors and quantities."""

import datetime
import re
import secrets
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, List, NamedTuple, Optional, Tuple


class Resource(NamedTuple):
    """One REST resource the stand-in serves."""

    kind: str
    plural: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    name_rule: str  # "label", "subdomain" or "job" (a subdomain of at most 63 characters)
    short_names: Tuple[str, ...] = ()
    subresources: Tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """``v1`` or ``group/version``."""
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``pods`` or ``jobs.batch``, as error messages name a resource."""
        return "%s.%s" % (self.plural, self.group) if self.group else self.plural

    @property
    def group_kind(self) -> str:
        """``Pod`` or ``Job.batch``, as Invalid messages name a kind."""
        return "%s.%s" % (self.kind, self.group) if self.group else self.kind


VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

RESOURCES = [
    Resource("Namespace", "namespaces", "", "v1", False, "label", ("ns",), ("status",)),
    Resource("Node", "nodes", "", "v1", False, "subdomain", ("no",), ("status",)),
    Resource("Pod", "pods", "", "v1", True, "subdomain", ("po",), ("status", "log", "portforward")),
    Resource("Service", "services", "", "v1", True, "label", ("svc",), ("status",)),
    Resource("Endpoints", "endpoints", "", "v1", True, "subdomain", ("ep",)),
    Resource("Secret", "secrets", "", "v1", True, "subdomain"),
    Resource("ConfigMap", "configmaps", "", "v1", True, "subdomain", ("cm",)),
    Resource("Event", "events", "", "v1", True, "subdomain", ("ev",)),
    Resource("PersistentVolumeClaim", "persistentvolumeclaims", "", "v1", True, "subdomain", ("pvc",), ("status",)),
    Resource("Job", "jobs", "batch", "v1", True, "job", (), ("status",)),
]
BY_PATH = {(r.api_version, r.plural): r for r in RESOURCES}
BY_KIND = {r.kind: r for r in RESOURCES}


def resource(kind: str) -> Resource:
    """The resource of a kind."""
    return BY_KIND[kind]


# ----------------------------------------------------------------------------------------------
# Errors: Status objects as the API server sends them
# ----------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An API error, rendered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Dict[str, Any]:
        """The ``Status`` body."""
        body: Dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str, kind: Optional[str] = None) -> Dict[str, Any]:
    details: Dict[str, Any] = {"name": name, "kind": kind or res.plural}
    if res.group:
        details["group"] = res.group
    return details


def not_found(res: Resource, name: str) -> ApiError:
    """404 NotFound."""
    return ApiError(404, "NotFound", '%s "%s" not found' % (res.group_resource, name), _details(res, name))


def already_exists(res: Resource, name: str) -> ApiError:
    """409 AlreadyExists."""
    return ApiError(409, "AlreadyExists", '%s "%s" already exists' % (res.group_resource, name), _details(res, name))


def conflict(res: Resource, name: str, why: str) -> ApiError:
    """409 Conflict."""
    return ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": %s' % (res.group_resource, name, why),
                    _details(res, name))


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def forbidden(res: Resource, name: str, why: str) -> ApiError:
    """403 Forbidden."""
    return ApiError(403, "Forbidden", '%s "%s" is forbidden: %s' % (res.group_resource, name, why), _details(res, name))


def method_not_allowed(method: str) -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource",
                    {"causes": [{"reason": "UnexpectedServerResponse", "message": "%s not allowed" % method}]})


def unsupported_media(content_type: str) -> ApiError:
    """415 UnsupportedMediaType."""
    return ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - accepted media '
                    'types include: application/json-patch+json, application/merge-patch+json, '
                    'application/strategic-merge-patch+json (got "%s")' % content_type)


class Cause(NamedTuple):
    """One cause of a 422 Invalid."""

    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, ...
    message: str


CAUSE_WORDS = {
    "FieldValueInvalid": "Invalid value",
    "FieldValueRequired": "Required value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTypeInvalid": "Invalid value",
    "FieldValueNotFound": "Not found",
}


def invalid(res: Resource, name: str, causes: List[Cause]) -> ApiError:
    """422 Invalid with ``details.causes``, worded like the API server's field errors."""
    rendered = ["%s: %s" % (c.field, c.message) if c.field else c.message for c in causes]
    summary = rendered[0] if len(rendered) == 1 else "[%s]" % ", ".join(rendered)
    message = '%s "%s" is invalid: %s' % (res.group_kind, name, summary)
    details = _details(res, name, res.kind)
    details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]
    return ApiError(422, "Invalid", message, details)


def field_error(field: str, reason: str, detail: str, value: Any = None, show_value: bool = True) -> Cause:
    """A cause worded like ``field.Invalid(path, value, detail)``."""
    word = CAUSE_WORDS.get(reason, "Invalid value")
    if reason in ("FieldValueRequired", "FieldValueForbidden") or not show_value:
        message = "%s: %s" % (word, detail) if detail else word
    else:
        shown = '"%s"' % value if isinstance(value, str) else ("null" if value is None else str(value))
        message = "%s: %s: %s" % (word, shown, detail) if detail else "%s: %s" % (word, shown)
    return Cause(field, reason, message)


# ----------------------------------------------------------------------------------------------
# Time, identifiers, names
# ----------------------------------------------------------------------------------------------
def now() -> str:
    """RFC 3339 UTC, whole seconds, as ``metav1.Time`` serialises."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """RFC 3339 UTC with microseconds, as ``metav1.MicroTime`` serialises."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime.datetime:
    """Parse an RFC 3339 timestamp the stand-in wrote."""
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def new_uid() -> str:
    """A fresh object uid."""
    return str(uuid.uuid4())


SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def random_suffix(length: int = 5) -> str:
    """The random part of a generated name (the API server's alphabet: no vowels, no 0/1/3)."""
    return "".join(secrets.choice(SUFFIX_ALPHABET) for _position in range(length))


DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_RE = re.compile("^%s$" % DNS1123_LABEL)
DNS1123_SUBDOMAIN_RE = re.compile(r"^{0}(\.{0})*$".format(DNS1123_LABEL))
QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
             "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
             "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
QUALIFIED_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                 "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                 "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                   "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                   "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")


def dns_label_errors(value: str) -> List[str]:
    """``IsDNS1123Label``."""
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not DNS1123_LABEL_RE.match(value):
        errors.append(LABEL_MSG)
    return errors


def dns_subdomain_errors(value: str) -> List[str]:
    """``IsDNS1123Subdomain``."""
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not DNS1123_SUBDOMAIN_RE.match(value):
        errors.append(SUBDOMAIN_MSG)
    return errors


def qualified_name_errors(value: str) -> List[str]:
    """``IsQualifiedName``: label and annotation keys."""
    prefix, slash, name = value.rpartition("/")
    errors = []
    if slash:
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += ["prefix part " + e for e in dns_subdomain_errors(prefix)]
    if not name:
        errors.append("name part must be non-empty")
    else:
        if len(name) > 63:
            errors.append("name part must be no more than 63 characters")
        if not QUALIFIED_NAME_RE.match(name):
            errors.append(QUALIFIED_MSG)
    return errors


def label_value_errors(value: str) -> List[str]:
    """``IsValidLabelValue``."""
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not LABEL_VALUE_RE.match(value):
        errors.append(LABEL_VALUE_MSG)
    return errors


# ----------------------------------------------------------------------------------------------
# Label and field selectors
# ----------------------------------------------------------------------------------------------
class Requirement(NamedTuple):
    """One label selector requirement."""

    key: str
    op: str  # =, !=, in, notin, exists, !, gt, lt
    values: Tuple[str, ...]

    def matches(self, labels: Dict[str, str]) -> bool:
        """Whether ``labels`` satisfy the requirement."""
        has = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        try:
            number, bound = int(value or ""), int(self.values[0])
        except ValueError:
            return False
        return number > bound if self.op == "gt" else number < bound


_TOKEN_RE = re.compile(r"\s*(!=|==|=|!|\(|\)|,|<|>|[^\s!=(),<>]+)")


def _tokens(text: str) -> List[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match or match.end() == pos:
            raise bad_request("unable to parse requirement: %s" % text[pos:])
        tokens.append(match.group(1))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


def _check_key(key: str) -> None:
    errors = qualified_name_errors(key)
    if errors:
        raise bad_request('unable to parse requirement: values[0][%s]: Invalid value: "%s": %s' % (key, key, errors[0]))


def _check_value(key: str, value: str) -> None:
    errors = label_value_errors(value)
    if errors:
        raise bad_request('unable to parse requirement: values[0][%s]: Invalid value: "%s": %s' % (key, value, errors[0]))


def parse_label_selector(text: Optional[str]) -> List[Requirement]:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k,l>1``: ``labels.Parse``."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    reqs: List[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise bad_request("unable to parse requirement: found '', expected: identifier")
        i += 1
        return tokens[i - 1]

    while i < len(tokens):
        token = take()
        if token == "!":
            key = take()
            _check_key(key)
            reqs.append(Requirement(key, "!", ()))
        else:
            key = token
            _check_key(key)
            op = tokens[i] if i < len(tokens) else ","
            if op == ",":
                reqs.append(Requirement(key, "exists", ()))
            elif op in ("=", "==", "!="):
                i += 1
                value = tokens[i] if i < len(tokens) and tokens[i] != "," else ""
                if value:
                    i += 1
                _check_value(key, value)
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in ("in", "notin"):
                i += 1
                if take() != "(":
                    raise bad_request("unable to parse requirement: found '%s', expected: '('" % tokens[i - 1])
                values: List[str] = []
                while True:
                    value = take()
                    if value == ")":
                        break
                    if value == ",":
                        continue
                    _check_value(key, value)
                    values.append(value)
                reqs.append(Requirement(key, op, tuple(values)))
            elif op in (">", "<"):
                i += 1
                number = take()
                if not number.isdigit():
                    raise bad_request("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer")
                reqs.append(Requirement(key, "gt" if op == ">" else "lt", (number,)))
            else:
                raise bad_request("unable to parse requirement: found '%s', expected: in, notin, =, ==, !=, gt, lt" % op)
        if i < len(tokens):
            if tokens[i] != ",":
                raise bad_request("unable to parse requirement: found '%s', expected: ','" % tokens[i])
            i += 1
    return reqs


def selector_requirements(selector: Optional[Dict[str, Any]]) -> Optional[List[Requirement]]:
    """A ``LabelSelector`` object (matchLabels + matchExpressions) as requirements; None selects nothing."""
    if selector is None:
        return None
    reqs = [Requirement(k, "=", (v,)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ())))
    return reqs


def labels_match(reqs: List[Requirement], labels: Optional[Dict[str, str]]) -> bool:
    """Whether every requirement holds."""
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


FIELD_SELECTORS = {
    "*": ("metadata.name", "metadata.namespace"),
    "Pod": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
            "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"),
    "Event": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
              "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
              "reason", "reportingComponent", "source", "type"),
    "Secret": ("type",),
    "Namespace": ("status.phase",),
    "Job": ("status.successful",),
    "Node": ("spec.unschedulable",),
}


def _field_value(obj: Dict[str, Any], path: str) -> str:
    if path == "source":
        return ((obj.get("source") or {}).get("component")) or ""
    if path == "status.successful":
        return str((obj.get("status") or {}).get("succeeded") or 0)
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: Optional[str], kind: str) -> List[Tuple[str, str, str]]:
    """Parse ``metadata.name=x,status.phase!=Running``; unknown fields are a 400 like the server's."""
    if not text or not text.strip():
        return []
    allowed = FIELD_SELECTORS["*"] + FIELD_SELECTORS.get(kind, ())
    terms = []
    for term in text.split(","):
        term = term.strip()
        match = re.match(r"^([^=!]+)(==|=|!=)(.*)$", term)
        if not match:
            raise bad_request("invalid selector: '%s'; can't understand '%s'" % (text, term))
        field, op, value = match.groups()
        if field not in allowed:
            raise bad_request('field label not supported: %s' % field)
        terms.append((field, "!=" if op == "!=" else "=", value))
    return terms


def fields_match(terms: List[Tuple[str, str, str]], obj: Dict[str, Any]) -> bool:
    """Whether every field term holds."""
    for field, op, value in terms:
        actual = _field_value(obj, field)
        if (actual == value) != (op == "="):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Quantities
# ----------------------------------------------------------------------------------------------
_SUFFIXES = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10 ** 3, "M": 10 ** 6,
             "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18, "Ki": 2 ** 10, "Mi": 2 ** 20,
             "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_QUANTITY_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")
QUANTITY_MSG = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


def parse_quantity(value: Any) -> Decimal:
    """A ``resource.Quantity`` as a Decimal; ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(QUANTITY_MSG)
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY_RE.match(str(value).strip())
    if not match:
        raise ValueError(QUANTITY_MSG)
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number)
        if exponent:
            return amount * (Decimal(10) ** int(exponent[1:]))
    except (InvalidOperation, ValueError):
        raise ValueError(QUANTITY_MSG) from None
    return amount * Decimal(_SUFFIXES[suffix or ""])


def format_cpu(millis: int) -> str:
    """A CPU quantity as the API prints it."""
    return str(millis // 1000) if millis % 1000 == 0 else "%dm" % millis
