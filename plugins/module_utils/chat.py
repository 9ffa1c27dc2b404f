# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Requests: routing, sampling policy, message building, sending.

Routing (which service gets the request) never falls back silently to
``latest`` when several services run. Sampling values are applied only as
the user gave them; defaults are applied only to fields the user skipped
and are reported as defaults; fields the arch does not support are refused
before anything is sent.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os
import time

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog, readiness
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

CONSTRAINTS = catalog.REQUEST["network_arch_constraints"]
MIME_TYPES = catalog.REQUEST["mime_types"]
MAX_DATA_BYTES = catalog.REQUEST["data_uri_max_bytes"]
RETRY_TYPES = readiness.RETRY_TYPES
FATAL_TYPES = readiness.FATAL_TYPES


# -- routing -------------------------------------------------------------------
def describe(entry):
    return {
        "job_id": entry["job_id"],
        "name": entry.get("name"),
        "network_arch": entry.get("network_arch"),
        "host_url": entry.get("host_url"),
        "started_at": entry.get("started_at"),
    }


def _choice_text(candidates):
    return "; ".join(
        "%s (arch %s, url %s, started %s%s)" % (
            c["job_id"], c["network_arch"], c["host_url"], c["started_at"],
            ", name %s" % c["name"] if c.get("name") else "")
        for c in candidates
    )


def resolve_target(state, job_id=None, network_arch=None, name=None):
    """Pick the service for a request (CONTRACT §6 routing rules)."""
    entries = state.entries()
    if job_id:
        if job_id == "latest":
            job_id = state.latest
            if job_id is None:
                raise TaoInferenceError("job_id 'latest' was given but the registry %s holds no service; "
                                        "start one first" % state.path)
        if job_id not in entries:
            raise TaoInferenceError(
                "no service with job_id %s in the registry %s; running: %s"
                % (job_id, state.path, _choice_text([describe(e) for e in entries.values()]) or "none"),
                candidates=[describe(e) for e in entries.values()])
        return entries[job_id]
    if name:
        found = state.find_name(name)
        if not found:
            raise TaoInferenceError("no service named %s in the registry %s" % (name, state.path))
        return found[0]
    ordered = sorted(entries.values(), key=lambda e: e.get("started_at") or "")
    if network_arch:
        matches = [e for e in ordered if e.get("network_arch") == network_arch]
        if not matches:
            others = [describe(e) for e in ordered]
            raise TaoInferenceError(
                "no %s service is running (registry %s); start one first. Running: %s"
                % (network_arch, state.path, _choice_text(others) or "none"), candidates=others)
        if len(matches) > 1:
            candidates = [describe(e) for e in matches]
            raise TaoInferenceError(
                "%d %s services are running; choose one with job_id: %s"
                % (len(matches), network_arch, _choice_text(candidates)), candidates=candidates)
        return matches[0]
    if not ordered:
        raise TaoInferenceError("no service is running (registry %s); start one first" % state.path)
    if len(ordered) > 1:
        candidates = [describe(e) for e in ordered]
        raise TaoInferenceError(
            "%d services are running and none was chosen; give job_id (or network_arch) for one of: %s"
            % (len(ordered), _choice_text(candidates)), candidates=candidates)
    return ordered[0]


# -- sampling ------------------------------------------------------------------
def sampling_fields(network_arch):
    """``{field: {type, default, min, max, description}}`` for ``network_arch``."""
    base = catalog.REQUEST["sampling_fields"]
    fields = {}
    for field, override in (CONSTRAINTS[network_arch].get("fields") or {}).items():
        merged = dict(base.get(field) or {})
        merged.update(override or {})
        fields[field] = merged
    return fields


def _coerce(field, spec, value, network_arch):
    kind = spec.get("type", "str")
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise TaoInferenceError("sampling.%s must be %s for %s, got %r" % (
            field, {"int": "a whole number", "float": "a number"}.get(kind, "a string"), network_arch, value))
    low, high = spec.get("min"), spec.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise TaoInferenceError("sampling.%s=%s is outside %s..%s for %s" % (
            field, value, "" if low is None else low, "" if high is None else high, network_arch))
    return value


def apply_sampling(network_arch, sampling):
    """Return ``(body_fields, applied, warnings)``.

    ``sampling`` holds the values the user chose; a field that is missing,
    ``None`` or ``""`` takes its default (reported with ``default: true``).
    """
    if sampling is None:
        raise TaoInferenceError(
            "sampling is required: give the values the user chose, or {} to accept every default for %s (%s)"
            % (network_arch, ", ".join("%s=%s" % (k, v.get("default")) for k, v in sorted(
                sampling_fields(network_arch).items()))))
    fields = sampling_fields(network_arch)
    constraints = CONSTRAINTS[network_arch]
    unsupported = set(constraints.get("unsupported") or [])
    body, applied, warnings = {}, [], []
    for field in sorted(sampling):
        if field in fields:
            continue
        if field in unsupported:
            raise TaoInferenceError("sampling.%s is not supported by %s; remove it (supported: %s)"
                                    % (field, network_arch, ", ".join(sorted(fields))))
        owners = [arch for arch in sorted(CONSTRAINTS) if field in sampling_fields(arch)]
        if owners:
            raise TaoInferenceError(
                "sampling.%s belongs to %s, but the chosen service runs %s; remove it or send the request "
                "to a %s service" % (field, " and ".join(owners), network_arch, owners[0]))
        raise TaoInferenceError("sampling.%s is not a sampling field; %s takes: %s"
                                % (field, network_arch, ", ".join(sorted(fields))))
    for field in sorted(fields):
        spec = fields[field]
        given = sampling.get(field)
        if given is None or (isinstance(given, str) and not given.strip() and spec.get("type") != "str"):
            value, is_default = spec.get("default"), True
        else:
            value, is_default = _coerce(field, spec, given, network_arch), False
        body[field] = value
        applied.append({"field": field, "value": value, "default": is_default})
        if not is_default and field in (constraints.get("ignored_by_server") or []):
            warnings.append("%s ignores %s; it was sent as given" % (network_arch, field))
    return body, applied, warnings


# -- media and messages --------------------------------------------------------
def _extension(path):
    return os.path.splitext(urlsplit(path).path if "://" in path else path)[1].lower()


def _kind_of_mime(mime):
    return "video" if mime.startswith("video/") else "image" if mime.startswith("image/") else None


def _allowed(network_arch):
    ext = CONSTRAINTS[network_arch].get("extensions") or {}
    return ext.get("image") or [], ext.get("video") or []


def _check_kind(network_arch, label, ext=None, mime=None):
    images, videos = _allowed(network_arch)
    allowed_mimes = dict((MIME_TYPES[e], "image") for e in images if e in MIME_TYPES)
    allowed_mimes.update((MIME_TYPES[e], "video") for e in videos if e in MIME_TYPES)
    if mime is not None:
        if mime not in allowed_mimes:
            raise TaoInferenceError("media %s has MIME type %s, which %s does not accept; accepted: %s"
                                    % (label, mime, network_arch, ", ".join(sorted(allowed_mimes))))
        return allowed_mimes[mime]
    if ext in images:
        return "image"
    if ext in videos:
        return "video"
    raise TaoInferenceError("media %s has extension '%s', which %s does not accept; images: %s; videos: %s"
                            % (label, ext or "(none)", network_arch, " ".join(images), " ".join(videos)))


def _reject_cloud(uri, label):
    for scheme in catalog.REQUEST["rejected_media_schemes"]:
        if uri.lower().startswith(scheme):
            raise TaoInferenceError(
                "media %s is a cloud URI (%s); the service reads no cloud storage: give an http(s) URL, a data: "
                "URI or a local file" % (label, scheme))


def media_item(network_arch, media, read=None):
    """One content item (``image_url`` / ``video_url``) for ``media``: an
    http(s) URL, a ``data:`` URI, or a local file (sent as a data URI)."""
    uri = str(media.get("url") if isinstance(media, dict) else media).strip()
    label = uri if len(uri) < 80 else uri[:77] + "..."
    _reject_cloud(uri, label)
    if uri.startswith("data:"):
        header = uri[5:].split(",", 1)[0]
        mime = header.split(";")[0].lower()
        kind = _check_kind(network_arch, label, mime=mime)
        payload = uri.split(",", 1)[1] if "," in uri else ""
        if len(payload) * 3 // 4 > MAX_DATA_BYTES:
            raise TaoInferenceError("media %s is larger than %d MiB" % (label, MAX_DATA_BYTES >> 20))
        url = uri
    elif uri.startswith(("http://", "https://")):
        declared = media.get("type") if isinstance(media, dict) else None
        kind = declared if declared in ("image", "video") else _check_kind(network_arch, label, ext=_extension(uri))
        url = uri
    elif "://" in uri and not uri.startswith("file://"):
        raise TaoInferenceError("media %s has an unknown scheme; give an http(s) URL, a data: URI or a local file"
                                % label)
    else:
        path = os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri)
        kind = _check_kind(network_arch, label, ext=_extension(path))
        if not os.path.isfile(path):
            raise TaoInferenceError("media file %s does not exist on the host that runs the module" % path)
        size = os.path.getsize(path)
        if size > MAX_DATA_BYTES:
            raise TaoInferenceError("media file %s is %d MiB; the service accepts at most %d MiB"
                                    % (path, size >> 20, MAX_DATA_BYTES >> 20))
        data = (read or _read_file)(path)
        url = "data:%s;base64,%s" % (MIME_TYPES[_extension(path)], base64.b64encode(data).decode("ascii"))
    key = "%s_url" % kind
    return {"type": key, key: {"url": url}}


def _read_file(path):
    with open(path, "rb") as handle:
        return handle.read()


def _first(messages, role):
    for message in messages:
        if isinstance(message, dict) and message.get("role") == role:
            return message
    return None


def _media_kinds(message):
    content = message.get("content") if message else None
    if not isinstance(content, list):
        return []
    return [item.get("type") for item in content
            if isinstance(item, dict) and item.get("type") in ("image_url", "video_url")]


def check_messages(network_arch, messages):
    """Validate a message list against the arch before sending it."""
    if not isinstance(messages, list) or not messages:
        raise TaoInferenceError("messages must be a non-empty list of {role, content} items")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TaoInferenceError("messages[%d] must be a dict with role and content" % index)
    user = _first(messages, "user")
    if user is None:
        raise TaoInferenceError("messages holds no user message; the service answers the first user message")
    content = user["content"]
    if isinstance(content, list):
        for item in content:
            if not isinstance(item, dict) or "type" not in item:
                raise TaoInferenceError("each content item needs a type (text, image_url or video_url)")
            kind = item["type"]
            if kind in ("image_url", "video_url"):
                url = ((item.get(kind) or {}).get("url") or "")
                label = url if len(url) < 80 else url[:77] + "..."
                _reject_cloud(url, label)
                if url.startswith("data:"):
                    _check_kind(network_arch, label, mime=url[5:].split(",", 1)[0].split(";")[0].lower())
            elif kind != "text":
                raise TaoInferenceError("content item type %s is not one of text, image_url, video_url" % kind)
    if CONSTRAINTS[network_arch].get("media_required") and not _media_kinds(user):
        raise TaoInferenceError(
            "%s needs an image or a video in every request; add one with media (a local file, an http(s) URL "
            "or a data: URI)" % network_arch)
    return user


def build_messages(network_arch, prompt=None, system_prompt=None, media=None, messages=None, read=None):
    if messages:
        if prompt or system_prompt or media:
            raise TaoInferenceError("give either messages, or prompt/system_prompt/media, not both")
        check_messages(network_arch, messages)
        return messages
    if not prompt:
        raise TaoInferenceError("prompt is required (or give a full messages list)")
    items = [media_item(network_arch, m, read) for m in (media or [])]
    user = {"role": "user", "content": items + [{"type": "text", "text": prompt}] if items else prompt}
    built = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [user]
    check_messages(network_arch, built)
    return built


def inference_type(messages):
    kinds = _media_kinds(_first(messages, "user"))
    return "video2world" if "video_url" in kinds else "image2world" if "image_url" in kinds else "text2world"


def build_body(network_arch, messages, sampling):
    body_fields, applied, warnings = apply_sampling(network_arch, sampling)
    body = {"messages": messages}
    body.update(body_fields)
    if CONSTRAINTS[network_arch].get("inference_type"):
        body["inference_type"] = inference_type(messages)
    return body, applied, warnings


# -- sending -------------------------------------------------------------------
def _error_of(response_json):
    error = response_json.get("error") if isinstance(response_json, dict) else None
    if isinstance(error, dict):
        return error.get("type") or "", error.get("message") or ""
    if isinstance(response_json, dict):
        return response_json.get("reason") or "", response_json.get("message") or ""
    return "", ""


def send(client, url, body, timeout, retry_timeout, sleep=time.sleep, clock=time.monotonic):
    """POST ``body``; retry 202/``model_not_ready`` and refused connections
    until ``retry_timeout``. Returns ``(status, json, attempts)``; raises
    :class:`TaoInferenceError` for 4xx/5xx and fatal states."""
    import httpx

    deadline = readiness.Deadline(retry_timeout, clock)
    delay = 0.25
    attempts = 0
    payload = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    while True:
        attempts += 1
        try:
            response = client.post(url, content=payload, headers=headers, timeout=timeout)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            if deadline.expired:
                raise TaoInferenceError("cannot reach %s: %s (tried for %.0f s); is the service running? "
                                        "Check it with tao.inference.tao_inference_info" % (url, exc, retry_timeout))
            sleep(min(delay, deadline.remaining()))
            delay = min(delay * 2, 5.0)
            continue
        except httpx.TimeoutException:
            raise TaoInferenceError("the service did not answer %s within %s s; raise timeout for long "
                                    "generations" % (url, timeout))
        try:
            data = response.json()
        except ValueError:
            data = {"error": {"type": "", "message": response.text[:500]}}
        if response.status_code == 200:
            return response.status_code, data, attempts
        err_type, err_msg = _error_of(data)
        retry = response.status_code == 202 or (response.status_code == 503 and err_type in RETRY_TYPES)
        if retry and not deadline.expired:
            sleep(min(delay, deadline.remaining()))
            delay = min(delay * 2, 5.0)
            continue
        if retry:
            msg = "the service was still not ready after %.0f s (%s: %s); wait for readiness or raise " \
                  "wait_timeout" % (retry_timeout, err_type, err_msg)
        elif err_type in FATAL_TYPES:
            msg = "the service cannot answer: %s (%s). Its model did not load; read the container log, fix the " \
                  "model, and start the service again" % (err_type, err_msg)
        elif response.status_code == 400:
            msg = "the service rejected the request as invalid (%s: %s); fix the request" % (err_type, err_msg)
        else:
            msg = "the service failed with HTTP %d (%s: %s); see its log" % (
                response.status_code, err_type or "no type", err_msg)
        raise TaoInferenceError(msg, status=response.status_code, error_type=err_type, error_message=err_msg)


def content_of(data):
    try:
        return data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TaoInferenceError("the service answered 200 without choices[0].message.content: %s"
                                % json.dumps(data)[:300])


def chat_url_of(entry):
    return entry["host_url"].rstrip("/") + catalog.REQUEST["endpoints"]["chat"]
