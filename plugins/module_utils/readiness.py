# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Readiness: probe, classify, wait with a deadline, fail fast.

Two answer shapes are understood: the real server's
``503 {"status": "not_ready", "reason": R}`` (it never answers 202), and the
shape the service's documentation describes, ``202/503 {"error": {"type": T}}``.
Fatal reasons end the wait at once.

A service whose endpoint asks for a token (a platform's own gateway in front of it)
records in its registry entry *which* token it takes and a binding of that token to its
URL (:func:`endpoint_auth`), never the token. Requests and probes take the token from
this run (:func:`endpoint_headers`) and send it only when the binding proves that the
token's holder started the service at that very URL: an entry planted or edited in the
registry cannot make a run send its token anywhere else.
"""

import hashlib
import hmac
import json
import re
import socket
import time

import http.client as http_client
from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.trust import is_loopback, is_token

READY = "ready"
WAITING = "waiting"
FATAL = "fatal"

MAX_BODY = 64 * 1024  # a readiness answer is a few hundred bytes; more is not read
RETRY_TYPES = frozenset(catalog.REQUEST["retry_types"])
FATAL_TYPES = frozenset(catalog.REQUEST["fatal_types"])


class Probe(object):
    """One readiness observation."""

    __slots__ = ("state", "reason", "message", "http_status")

    def __init__(self, state, reason, message="", http_status=None):
        self.state = state
        self.reason = reason
        self.message = message
        self.http_status = http_status

    @property
    def ready(self):
        return self.state == READY

    @property
    def fatal(self):
        return self.state == FATAL

    def as_dict(self):
        return {"state": self.state, "reason": self.reason, "message": self.message,
                "http_status": self.http_status}

    def __eq__(self, other):
        return isinstance(other, Probe) and self.as_dict() == other.as_dict()

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "Probe(%s, %s)" % (self.state, self.reason)


def _text(value, limit):
    """A server's word as short plain text (it may send any JSON there)."""
    return "".join(c if c.isprintable() else " " for c in str(value))[:limit]


def classify(http_status, body):
    """Turn a readiness answer into a :class:`Probe`."""
    data = body if isinstance(body, dict) else {}
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    reason = _text(data.get("reason") or error.get("type") or data.get("status") or "", 64)
    message = _text(data.get("message") or error.get("message") or "", 500)
    if http_status == 200 and data.get("status", READY) == READY and not error:
        return Probe(READY, READY, message, http_status)
    if http_status in (401, 403):
        # A gateway in front of the service refused the credentials: waiting will not change that.
        return Probe(FATAL, "unauthorized", message or "the endpoint refused the request's credentials (HTTP %d)"
                     % http_status, http_status)
    if reason in FATAL_TYPES:
        return Probe(FATAL, reason, message, http_status)
    if reason in RETRY_TYPES or http_status in (202, 503):
        return Probe(WAITING, reason or "http_%d" % http_status, message, http_status)
    return Probe(WAITING, "http_%s" % http_status, message or "unexpected answer", http_status)


def probe(base_url, timeout=2.0, headers=None):
    """GET the readiness route once (with ``headers``, e.g. from :func:`endpoint_headers`).
    Network trouble means "keep waiting"."""
    parts = urlsplit(base_url)
    conn_class = http_client.HTTPSConnection if parts.scheme == "https" else http_client.HTTPConnection
    conn = conn_class(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + catalog.REQUEST["endpoints"]["readiness"], headers=headers or {})
        response = conn.getresponse()
        raw = response.read(MAX_BODY + 1)
        status = response.status
    except (socket.error, http_client.HTTPException) as exc:
        return Probe(WAITING, "unreachable", str(exc) or exc.__class__.__name__)
    finally:
        conn.close()
    if len(raw) > MAX_BODY:
        return Probe(WAITING, "http_%s" % status, "the readiness answer is larger than %d bytes" % MAX_BODY, status)
    try:
        body = json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        body = {}
    return classify(status, body)


class Deadline(object):
    """A monotonic deadline."""

    def __init__(self, seconds, clock=time.monotonic):
        self._clock = clock
        self.start = clock()
        self.end = self.start + max(0.0, float(seconds))

    def remaining(self):
        return max(0.0, self.end - self._clock())

    def elapsed(self):
        return self._clock() - self.start

    @property
    def expired(self):
        return self._clock() >= self.end


def wait_ready(base_url, timeout, sleep_max=0.5, alive=None, on_change=None,
               probe_fn=probe, sleep=time.sleep, clock=time.monotonic, alive_every=0.25, headers=None):
    """Poll until ready, fatal, or ``timeout`` seconds pass; return the last Probe.

    Polls start 10 ms apart and grow by a fifth each time up to ``sleep_max``
    (10, 12, 14, 17 ms ... 0.5 s): a service that is up within a second is seen
    within a few milliseconds, and a long load costs a couple of requests a second.
    ``alive()`` may return a fatal :class:`Probe` (e.g. the container exited) to
    stop at once; it asks the platform, so it runs at most every ``alive_every``
    seconds while the service does not answer ready.
    ``on_change(probe, elapsed)`` is called whenever the reason changes.
    ``headers`` go with every probe (the endpoint's token, see :func:`endpoint_headers`).
    """
    def send(url, timeout):
        return probe_fn(url, timeout=timeout, headers=headers) if headers else probe_fn(url, timeout=timeout)

    deadline = Deadline(timeout, clock)
    sleep_max = max(0.01, sleep_max)  # a zero or negative wait_sleep would spin
    delay = min(0.01, sleep_max)
    last = None
    last_alive = deadline.start
    while True:
        current = send(base_url, timeout=max(0.5, min(5.0, deadline.remaining() or 0.5)))
        if not current.ready and not current.fatal and alive is not None and (
                clock() - last_alive >= alive_every or deadline.expired):
            last_alive = clock()
            dead = alive()
            if dead is not None:
                current = dead
        if on_change is not None and (last is None or last.reason != current.reason):
            on_change(current, deadline.elapsed())
        last = current
        if current.ready or current.fatal or deadline.expired:
            return current
        sleep(max(0.0, min(delay, deadline.remaining())))
        delay = min(delay * 1.2, sleep_max)


# -- the endpoint's token ----------------------------------------------------------------
AUTH_SCHEME = "bearer"
_BINDING_ROUNDS = 50000  # ~10 ms: cheap once per task, slow for guessing a weak token from a stolen registry
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SOURCE = re.compile(r"[A-Z][A-Z0-9_]{0,62}")


def token_binding(token, job_id, host_url, source):
    """A proof that ``token`` (from ``source``) was meant for the service ``job_id`` at ``host_url``:
    a PBKDF2-HMAC-SHA256 of the token over those three. It reveals nothing usable about the token."""
    salt = ("tao.inference endpoint token v1\0%s\0%s\0%s" % (job_id, host_url, source)).encode("utf-8")
    return hashlib.pbkdf2_hmac("sha256", token.encode("utf-8"), salt, _BINDING_ROUNDS).hex()


def endpoint_auth(job_id, host_url, source, token):
    """The registry field of a service whose endpoint takes ``token`` (read from ``source``: an
    environment variable name, or the option that falls back to it) as a bearer token."""
    return {"scheme": AUTH_SCHEME, "source": source, "binding": token_binding(token, job_id, host_url, source)}


def endpoint_auth_problem(value):
    """Why ``value`` is not an ``endpoint_auth`` registry field, or None (a registry kind check)."""
    if not isinstance(value, dict) or set(value) != set(("scheme", "source", "binding")):
        return "is not an object with scheme, source and binding"
    if value["scheme"] != AUTH_SCHEME:
        return "scheme is not %s" % AUTH_SCHEME
    if not isinstance(value["source"], str) or not _SOURCE.fullmatch(value["source"]):
        return "source is not a variable name"
    if not isinstance(value["binding"], str) or not _HEX64.fullmatch(value["binding"]):
        return "binding is not a hex digest"
    return None


# Where a service's entry came from (``what`` below), and what to do when its binding does not hold.
_REMEDY = {"registry entry": "planted or edited: remove it",
           "fleet row": "forged or edited: build the view again (the status playbook, or the registry_facts role)"}


def endpoint_headers(entry, environ, options=None, what="registry entry"):
    """The headers requests to ``entry``'s service carry: ``{}`` when its endpoint takes no token,
    else ``Authorization: Bearer <token>``, the token taken from this run (``options``, then
    ``environ``) under the name the platform's driver declares (``ENDPOINT_TOKENS``: source name ->
    option). Refuses (and sends nothing) when the entry's binding does not prove that this token was
    given to this service at this URL, or when the token would cross the network in clear. ``what`` names
    where ``entry`` came from in messages: a key of ``_REMEDY``."""
    auth = entry.get("endpoint_auth")
    if not auth:
        return {}
    job_id, url = entry.get("job_id"), entry.get("host_url") or ""
    problem = endpoint_auth_problem(auth)
    if problem:
        raise TaoInferenceError("the %s of service %s has an endpoint_auth that %s; the token is not sent"
                                % (what, job_id, problem), job_id=job_id)
    sources = platforms.driver_class(entry.get("platform")).ENDPOINT_TOKENS
    source = auth["source"]
    if source not in sources:
        raise TaoInferenceError(
            "the %s of service %s asks for the token in %s, which platform %s never gives an endpoint; "
            "nothing is sent (was it edited?)" % (what, job_id, source, entry.get("platform")), job_id=job_id)
    token = (options or {}).get(sources[source]) or environ.get(source)
    if token and not is_token(token):
        raise TaoInferenceError("the token in %s holds a character a token never has (a space, a newline...): strip "
                                "it; the value is not shown and nothing is sent" % source, job_id=job_id)
    if not token:
        # ``options`` None: the calling module has no such option (tao_inference_request reads the environment).
        raise TaoInferenceError(
            "service %s (%s) answers only requests that carry the token it was started with, from %s: export %s%s "
            "and run again" % (job_id, url, source, source,
                               "" if options is None else " (or give %s)" % sources[source]), job_id=job_id)
    parts = urlsplit(url)
    if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        raise TaoInferenceError("service %s is at %s: its token would cross the network in clear over http; it is "
                                "not sent" % (job_id, url), job_id=job_id)
    if not hmac.compare_digest(token_binding(token, job_id, url, source), auth["binding"]):
        raise TaoInferenceError(
            "the token in %s is not the one service %s was started with at %s, so it is not sent there. Use the "
            "token the service was started with (if the token has changed since, stop the service and start it "
            "again); if you did not start it, its %s may have been %s" % (source, job_id, url, what, _REMEDY[what]),
            job_id=job_id)
    return {"Authorization": "Bearer " + token}
