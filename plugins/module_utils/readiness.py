# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Readiness: probe, classify, wait with a deadline, fail fast.

Two answer shapes are understood: the real server's
``503 {"status": "not_ready", "reason": R}`` (it never answers 202), and the
shape the service's documentation describes, ``202/503 {"error": {"type": T}}``.
Fatal reasons end the wait at once.
"""

import json
import socket
import time

import http.client as http_client
from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog

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
    if reason in FATAL_TYPES:
        return Probe(FATAL, reason, message, http_status)
    if reason in RETRY_TYPES or http_status in (202, 503):
        return Probe(WAITING, reason or "http_%d" % http_status, message, http_status)
    return Probe(WAITING, "http_%s" % http_status, message or "unexpected answer", http_status)


def probe(base_url, timeout=2.0):
    """GET the readiness route once. Network trouble means "keep waiting"."""
    parts = urlsplit(base_url)
    conn_class = http_client.HTTPSConnection if parts.scheme == "https" else http_client.HTTPConnection
    conn = conn_class(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + catalog.REQUEST["endpoints"]["readiness"])
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
               probe_fn=probe, sleep=time.sleep, clock=time.monotonic, alive_every=0.25):
    """Poll until ready, fatal, or ``timeout`` seconds pass; return the last Probe.

    Polls start 10 ms apart and grow by a fifth each time up to ``sleep_max``
    (10, 12, 14, 17 ms ... 0.5 s): a service that is up within a second is seen
    within a few milliseconds, and a long load costs a couple of requests a second.
    ``alive()`` may return a fatal :class:`Probe` (e.g. the container exited) to
    stop at once; it asks the platform, so it runs at most every ``alive_every``
    seconds while the service does not answer ready.
    ``on_change(probe, elapsed)`` is called whenever the reason changes.
    """
    deadline = Deadline(timeout, clock)
    sleep_max = max(0.01, sleep_max)  # a zero or negative wait_sleep would spin
    delay = min(0.01, sleep_max)
    last = None
    last_alive = deadline.start
    while True:
        current = probe_fn(base_url, timeout=max(0.5, min(5.0, deadline.remaining() or 0.5)))
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
