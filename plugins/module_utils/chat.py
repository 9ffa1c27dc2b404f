# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Requests: routing, sampling policy, media and message building, sending, saving answers.

Routing (which service gets the request) never falls back silently to
``latest`` when several services run. Sampling values are applied only as
the user gave them; defaults are applied only to fields the user skipped
and are reported as defaults; fields the arch does not support are refused
before anything is sent.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import json
import os
import re
import time

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog, procs, readiness
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import write_atomically

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
    """Pick the service for a request: an explicit job_id or name must exist; else the one
    service of ``network_arch``, else the one service (several -> the user must choose)."""
    return _ready_to_serve(_select(state, job_id, network_arch, name))


def _ready_to_serve(entry):
    """A service whose start has not finished has no endpoint yet: say so instead of sending."""
    if entry.get("status") == "starting" or not entry.get("host_url"):
        if procs.owner_alive(entry.get("owner")):
            raise TaoInferenceError(
                "service %s (%s) is still starting (since %s); wait for its start to finish (tao_inference_service "
                "waits for readiness) and send the request again" % (
                    entry["job_id"], entry.get("network_arch"), entry.get("started_at")), job_id=entry["job_id"])
        raise TaoInferenceError(
            "service %s (%s) never finished starting: the run that started it was interrupted. Start it again "
            "(tao_inference_service with its name) or stop it with state=absent and job_id %s"
            % (entry["job_id"], entry.get("network_arch"), entry["job_id"]), job_id=entry["job_id"])
    return entry


def _select(state, job_id, network_arch, name):
    entries = state.entries()
    if job_id:
        if job_id == "latest":
            job_id = state.latest
            if job_id is None:
                raise TaoInferenceError("job_id 'latest' was given but the registry %s holds no service; "
                                        "start one first" % state.path)
        if state.get(job_id) is None:
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


def _allowed(network_arch):
    ext = CONSTRAINTS[network_arch].get("extensions") or {}
    return ext.get("image") or [], ext.get("video") or []


def mime_types(network_arch):
    """Extension -> MIME type as ``network_arch``'s server expects it (base table plus the
    arch's own spellings, e.g. tao-dataservices wants video/mov, not video/quicktime)."""
    table = dict(MIME_TYPES)
    table.update(CONSTRAINTS[network_arch].get("mime_types") or {})
    return table


def _check_kind(network_arch, label, ext=None, mime=None):
    images, videos = _allowed(network_arch)
    table = mime_types(network_arch)
    allowed_mimes = dict((table[e], "image") for e in images if e in table)
    allowed_mimes.update((table[e], "video") for e in videos if e in table)
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


class MediaRef(object):
    """A checked media reference: ``url`` (an http(s) URL or a data URI) or
    ``path`` (a local file, sent as a ``data:<mime>;base64,...`` URI)."""

    __slots__ = ("kind", "url", "path", "mime")

    def __init__(self, kind, url=None, path=None, mime=None):
        self.kind = kind
        self.url = url
        self.path = path
        self.mime = mime


def _label(uri):
    return uri if len(uri) < 80 else uri[:77] + "..."


def check_media(network_arch, media, base_dir=None):
    """Check one media reference against the arch (scheme, extension or MIME
    type, size, existence) without reading it; return a :class:`MediaRef`.
    A relative local path is taken relative to ``base_dir`` when given."""
    uri = str(media.get("url") if isinstance(media, dict) else media).strip()
    label = _label(uri)
    _reject_cloud(uri, label)
    if uri.startswith("data:"):
        kind = _check_kind(network_arch, label, mime=uri[5:].split(",", 1)[0].split(";")[0].lower())
        payload = uri.split(",", 1)[1] if "," in uri else ""
        if len(payload) * 3 // 4 > MAX_DATA_BYTES:
            raise TaoInferenceError("media %s is larger than %d MiB" % (label, MAX_DATA_BYTES >> 20))
        return MediaRef(kind, url=uri)
    if uri.startswith(("http://", "https://")):
        declared = media.get("type") if isinstance(media, dict) else None
        kind = declared if declared in ("image", "video") else _check_kind(network_arch, label, ext=_extension(uri))
        return MediaRef(kind, url=uri)
    if "://" in uri and not uri.startswith("file://"):
        raise TaoInferenceError("media %s has an unknown scheme; give an http(s) URL, a data: URI or a local file"
                                % label)
    path = os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri)
    if base_dir and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    kind = _check_kind(network_arch, label, ext=_extension(path))
    if not os.path.isfile(path):
        raise TaoInferenceError("media file %s does not exist on the host that runs the module" % path)
    size = os.path.getsize(path)
    if size > MAX_DATA_BYTES:
        raise TaoInferenceError("media file %s is %d MiB; the service accepts at most %d MiB"
                                % (path, size >> 20, MAX_DATA_BYTES >> 20))
    return MediaRef(kind, path=path, mime=mime_types(network_arch)[_extension(path)])


def data_uri_prefix(mime):
    return "data:%s;base64," % mime


def media_item(network_arch, media, read=None, local_url=None, base_dir=None):
    """One content item (``image_url`` / ``video_url``) for ``media``: an
    http(s) URL, a ``data:`` URI, or a local file. ``local_url(ref)`` gives the
    URL of a local file; by default the file is read and inlined as a data URI."""
    ref = check_media(network_arch, media, base_dir)
    if ref.path is None:
        url = ref.url
    elif local_url is not None:
        url = local_url(ref)
    else:
        url = data_uri_prefix(ref.mime) + base64.b64encode((read or _read_file)(ref.path)).decode("ascii")
    key = "%s_url" % ref.kind
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
                label = _label(url)
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


def build_messages(network_arch, prompt=None, system_prompt=None, media=None, messages=None, read=None,
                   local_url=None, base_dir=None):
    """The message list of one request, checked against the arch (see :func:`media_item`
    for ``read``, ``local_url`` and ``base_dir``)."""
    if messages:
        if prompt or system_prompt or media:
            raise TaoInferenceError("give either messages, or prompt/system_prompt/media, not both")
        check_messages(network_arch, messages)
        return messages
    if not prompt:
        raise TaoInferenceError("prompt is required (or give a full messages list)")
    items = [media_item(network_arch, m, read, local_url, base_dir) for m in (media or [])]
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


JSON_HEADERS = {"Content-Type": "application/json"}


def answer_json(response):
    """The JSON of an httpx response, or an error shape holding its text."""
    try:
        return response.json()
    except ValueError:
        return {"error": {"type": "", "message": response.text[:500]}}


class Retry(object):
    """The retry policy of one request, shared by :func:`send` and the batch engine.

    202, 503 ``model_not_ready`` (any retry type) and refused connections are
    retried, 0.25 s apart at first and doubling up to 5 s, until ``retry_timeout``;
    every other answer ends the request. Each method returns the pause before the
    next attempt, or raises :class:`TaoInferenceError` (with ``error_type``).
    """

    def __init__(self, url, retry_timeout, clock=time.monotonic):
        self.url = url
        self.retry_timeout = retry_timeout
        self.deadline = readiness.Deadline(retry_timeout, clock)
        self.delay = 0.25
        self.attempts = 0

    def _pause(self):
        pause = min(self.delay, self.deadline.remaining())
        self.delay = min(self.delay * 2, 5.0)
        return pause

    def unreachable(self, exc):
        """After a refused or dropped connection."""
        if self.deadline.expired:
            raise TaoInferenceError("cannot reach %s: %s (tried for %.0f s); is the service running? "
                                    "Check it with tao.inference.tao_inference_info"
                                    % (self.url, exc, self.retry_timeout), error_type="unreachable")
        return self._pause()

    def timed_out(self, timeout):
        """The error for an answer that took longer than ``timeout`` (never retried)."""
        return TaoInferenceError("the service did not answer %s within %s s; raise timeout for long "
                                 "generations" % (self.url, timeout), error_type="timeout")

    def answered(self, status_code, data):
        """After an answer: ``None`` for a 200, else the pause before a retry."""
        if status_code == 200:
            return None
        err_type, err_msg = _error_of(data)
        retry = status_code == 202 or (status_code == 503 and err_type in RETRY_TYPES)
        if retry and not self.deadline.expired:
            return self._pause()
        if retry:
            msg = "the service was still not ready after %.0f s (%s: %s); wait for readiness or raise " \
                  "wait_timeout" % (self.retry_timeout, err_type, err_msg)
        elif err_type in FATAL_TYPES:
            msg = "the service cannot answer: %s (%s). Its model did not load; read the container log, fix the " \
                  "model, and start the service again" % (err_type, err_msg)
        elif status_code == 400:
            msg = "the service rejected the request as invalid (%s: %s); fix the request" % (err_type, err_msg)
        else:
            msg = "the service failed with HTTP %d (%s: %s); see its log" % (
                status_code, err_type or "no type", err_msg)
        raise TaoInferenceError(msg, status=status_code, error_type=err_type, error_message=err_msg)


def send(client, url, body, timeout, retry_timeout, sleep=time.sleep, clock=time.monotonic):
    """POST ``body``; retry as :class:`Retry` says. Returns ``(status, json,
    attempts)``; raises :class:`TaoInferenceError` for 4xx/5xx and fatal states."""
    import httpx

    retry = Retry(url, retry_timeout, clock)
    payload = json.dumps(body).encode("utf-8")
    while True:
        retry.attempts += 1
        try:
            response = client.post(url, content=payload, headers=JSON_HEADERS, timeout=timeout)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            sleep(retry.unreachable(exc))
            continue
        except httpx.TimeoutException:
            raise retry.timed_out(timeout)
        data = answer_json(response)
        pause = retry.answered(response.status_code, data)
        if pause is None:
            return response.status_code, data, retry.attempts
        sleep(pause)


def content_of(data):
    try:
        return data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TaoInferenceError("the service answered 200 without choices[0].message.content: %s"
                                % json.dumps(data)[:300], error_type="bad_answer")


# The first extension listed for each MIME type (video/mp4 -> .mp4).
EXTENSION_OF_MIME = dict((mime, ext) for ext, mime in reversed(list(MIME_TYPES.items())))
DATA_ANSWER = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,")


def save_answer(content, folder, stem):
    """Write a ``data:<mime>;base64,...`` answer (cosmos-predict2.5's video) to
    ``<folder>/<stem><ext>`` (``.mp4`` for ``video/mp4``) through a temp file;
    return its path, or ``None`` when ``content`` is not a data URI."""
    match = DATA_ANSWER.match(content) if isinstance(content, str) else None
    if match is None:
        return None
    extension = EXTENSION_OF_MIME.get(match.group(1), ".bin")
    try:
        data = base64.b64decode(content[match.end():], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaoInferenceError("the service answered a %s data URI that is not valid base64: %s"
                                % (match.group(1), exc), error_type="bad_answer")
    path = os.path.join(folder, stem + extension)
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise TaoInferenceError("cannot save the answer to %s: %s" % (path, exc.strerror or exc))
    return path
