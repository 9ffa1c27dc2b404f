"""Objects in memory: resource versions, watch history and the three patch formats."""

import copy
import json
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from .model import ApiError, Requirement, Resource, bad_request, fields_match, labels_match, not_found

Key = Tuple[str, str, str]  # (plural, namespace or "", name)
Listener = Callable[[str, Resource, Dict[str, Any]], None]


class Store:
    """Every object, keyed by (plural, namespace, name); every change bumps one resourceVersion counter.

    Readers get deep copies.  Listeners run under the store lock right after a change: they must only
    queue work (the controllers do the rest on their own threads)."""

    HISTORY = 20000

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._rv = 1
        self._objects: Dict[Key, Dict[str, Any]] = {}
        self._history: Deque[Tuple[int, str, str, Dict[str, Any]]] = deque(maxlen=self.HISTORY)
        self._listeners: List[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event_type, resource, object)`` after each change."""
        self._listeners.append(listener)

    @property
    def resource_version(self) -> str:
        """The current resourceVersion, as lists carry it."""
        with self.lock:
            return str(self._rv)

    def _commit(self, event: str, res: Resource, obj: Dict[str, Any]) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        snapshot = copy.deepcopy(obj)
        self._history.append((self._rv, event, res.plural, snapshot))
        self.changed.notify_all()
        for listener in self._listeners:
            listener(event, res, snapshot)

    @staticmethod
    def key(res: Resource, namespace: Optional[str], name: str) -> Key:
        """The key of an object."""
        return (res.plural, (namespace or "") if res.namespaced else "", name)

    def find(self, res: Resource, namespace: Optional[str], name: str) -> Optional[Dict[str, Any]]:
        """A copy of the object, or None."""
        with self.lock:
            obj = self._objects.get(self.key(res, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def get(self, res: Resource, namespace: Optional[str], name: str) -> Dict[str, Any]:
        """A copy of the object; 404 if absent."""
        obj = self.find(res, namespace, name)
        if obj is None:
            raise not_found(res, name)
        return obj

    def list(self, res: Resource, namespace: Optional[str] = None, labels: Optional[List[Requirement]] = None,
             fields: Optional[List[Tuple[str, str, str]]] = None) -> Tuple[List[Dict[str, Any]], str]:
        """Copies of the matching objects, ordered by namespace and name, and the list's resourceVersion."""
        with self.lock:
            items = [copy.deepcopy(obj) for (plural, ns, _name), obj in sorted(self._objects.items())
                     if plural == res.plural and (not namespace or ns == namespace)
                     and labels_match(labels or [], obj["metadata"].get("labels"))
                     and fields_match(fields or [], obj)]
            return items, str(self._rv)

    def select(self, res: Resource, namespace: Optional[str] = None, labels: Optional[List[Requirement]] = None,
               fields: Optional[List[Tuple[str, str, str]]] = None) -> List[Dict[str, Any]]:
        """Copies of the matching objects (:meth:`list` without the resourceVersion)."""
        return self.list(res, namespace, labels, fields)[0]

    def uids(self) -> Dict[str, Tuple[str, str, str]]:
        """Every live uid, with its (plural, namespace, name)."""
        with self.lock:
            return {obj["metadata"]["uid"]: key for key, obj in self._objects.items()}

    def dependents(self, uid: str) -> List[Tuple[Key, Dict[str, Any]]]:
        """Objects whose ownerReferences name ``uid``."""
        with self.lock:
            return [(key, copy.deepcopy(obj)) for key, obj in self._objects.items()
                    if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])]

    def create(self, res: Resource, obj: Dict[str, Any], exists: Callable[[], ApiError]) -> Dict[str, Any]:
        """Store a new object; ``exists()`` is raised if the name is taken."""
        meta = obj["metadata"]
        key = self.key(res, meta.get("namespace"), meta["name"])
        with self.lock:
            if key in self._objects:
                raise exists()
            obj = copy.deepcopy(obj)
            self._objects[key] = obj
            self._commit("ADDED", res, obj)
            return copy.deepcopy(obj)

    def mutate(self, res: Resource, namespace: Optional[str], name: str,
               change: Callable[[Dict[str, Any]], Optional[bool]]) -> Optional[Dict[str, Any]]:
        """Apply ``change(obj)`` in place under the lock; a new resourceVersion only if the object changed.

        ``change`` may raise an ApiError (nothing is stored) or return False to skip.  Returns a copy of the
        object after the change, or None if the object is gone."""
        key = self.key(res, namespace, name)
        with self.lock:
            current = self._objects.get(key)
            if current is None:
                return None
            work = copy.deepcopy(current)
            if change(work) is False or _same(work, current):
                return copy.deepcopy(current)
            self._objects[key] = work
            self._commit("MODIFIED", res, work)
            return copy.deepcopy(work)

    def remove(self, res: Resource, namespace: Optional[str], name: str, uid: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """Remove the object (if ``uid`` is given, only that incarnation of it); returns what was removed."""
        key = self.key(res, namespace, name)
        with self.lock:
            current = self._objects.get(key)
            if current is None or (uid and current["metadata"]["uid"] != uid):
                return None
            del self._objects[key]
            self._commit("DELETED", res, current)
            return copy.deepcopy(current)

    def history_since(self, resource_version: int, timeout: float) -> List[Tuple[int, str, str, Dict[str, Any]]]:
        """Changes after ``resource_version``, waiting up to ``timeout`` seconds for the first one.

        Raises 410 Expired when that version is older than the history kept."""
        with self.lock:
            if self._history and resource_version < self._history[0][0] - 1:
                raise ApiError(410, "Expired", "too old resource version: %d (%d)" % (resource_version, self._history[0][0] - 1))
            if self._rv <= resource_version:
                self.changed.wait(timeout)
            return [entry for entry in self._history if entry[0] > resource_version]


def _same(left: Dict[str, Any], right: Dict[str, Any]) -> bool:
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# patchMergeKey of the list fields of the core and batch types (the item keys decide for "ports")
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "volumes": "name",
    "env": "name", "imagePullSecrets": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath",
    "conditions": "type", "ownerReferences": "uid", "hostAliases": "ip", "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey", "readinessGates": "conditionType",
}
MERGED_PRIMITIVE_LISTS = {"finalizers"}


def _merge_key(field: str, items: Iterable[Any]) -> Optional[str]:
    if field == "ports":
        dicts = [item for item in items if isinstance(item, dict)]
        return "containerPort" if any("containerPort" in item for item in dicts) else "port"
    return MERGE_KEYS.get(field)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch for the built-in types: lists with a patchMergeKey merge item by item;
    ``$patch: replace|delete``, ``$retainKeys`` and ``$deleteFromPrimitiveList/<field>`` are honoured,
    ``$setElementOrder/<field>`` is accepted (order is kept as patched)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, current: Any, patch: List[Any]) -> List[Any]:
    current = current if isinstance(current, list) else []
    if field in MERGED_PRIMITIVE_LISTS:
        return current + [item for item in patch if item not in current]
    merge_key = _merge_key(field, list(current) + patch)
    if not merge_key or not all(isinstance(item, dict) for item in patch):
        return copy.deepcopy([item for item in patch if not (isinstance(item, dict) and item.get("$patch"))])
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return copy.deepcopy([item for item in patch if item.get("$patch") != "replace"])
    result = copy.deepcopy(current)
    for item in patch:
        position = next((i for i, old in enumerate(result)
                         if isinstance(old, dict) and merge_key in item and old.get(merge_key) == item.get(merge_key)), None)
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[position] = strategic_merge_patch(result[position], item)
    return result


def _pointer(path: str) -> List[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request('the server rejected our request due to an error in our request: invalid JSON pointer "%s"' % path)
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(doc: Any, parts: List[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise bad_request("the server rejected our request due to an error in our request: a JSON patch is a list")
    doc = copy.deepcopy(target)
    for op in operations:
        try:
            doc = _apply_operation(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            kind, path = (op.get("op"), op.get("path")) if isinstance(op, dict) else (op, "")
            raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: "
                           "%s operation on %s failed: %s" % (kind, path, exc)) from None
    return doc


def _apply_operation(doc: Any, op: Dict[str, Any]) -> Any:
    kind = op["op"]
    parts = _pointer(op["path"])
    if kind == "test":
        if _walk(doc, parts) != op["value"]:
            raise ValueError("testing value %s failed" % op["path"])
        return doc
    if kind in ("move", "copy"):
        source = _pointer(op["from"])
        value = copy.deepcopy(_walk(doc, source))
        if kind == "move":
            doc = _apply_operation(doc, {"op": "remove", "path": op["from"]})
        return _apply_operation(doc, {"op": "add", "path": op["path"], "value": value})
    if not parts:
        if kind == "remove":
            raise ValueError("cannot remove the whole document")
        return copy.deepcopy(op["value"])
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if kind == "add":
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind == "replace":
        index: Any = int(last) if isinstance(parent, list) else last
        if not isinstance(parent, list) and last not in parent:
            raise KeyError(last)
        parent[index] = copy.deepcopy(op["value"])
    else:
        raise ValueError("unknown operation %r" % kind)
    return doc
