# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sending: the one send-and-retry loop, used by a single request and by each request of a batch.

A service that is still loading its model answers 202, or 503 with a retry type; those
answers and refused connections are retried until the service is ready or the retry time
is up. Every other answer ends the request: a 200 is the answer, the rest are errors that
say what to do next.
"""

import json
import time

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

try:
    import httpx
    HTTPX_IMPORT_ERROR = None
except ImportError:  # the request module reports it with missing_required_lib
    import traceback
    httpx = None
    HTTPX_IMPORT_ERROR = traceback.format_exc()

RETRY_TYPES = readiness.RETRY_TYPES
FATAL_TYPES = readiness.FATAL_TYPES
JSON_HEADERS = {"Content-Type": "application/json"}


def proxies_allowed(url, headers):
    """Whether a request may go through a proxy the environment names (HTTP_PROXY...): not when it
    carries a token over plain http, where the proxy would read the token in clear."""
    return not (headers and str(url).lower().startswith("http://"))


def _error_of(response_json):
    error = response_json.get("error") if isinstance(response_json, dict) else None
    if isinstance(error, dict):
        return error.get("type") or "", error.get("message") or ""
    if isinstance(response_json, dict):
        return response_json.get("reason") or "", response_json.get("message") or ""
    return "", ""


def answer_json(response):
    """The JSON of an httpx response, or an error shape holding its text."""
    try:
        return response.json()
    except ValueError:
        return {"error": {"type": "", "message": response.text[:500]}}


class Retry(object):
    """The retry policy of one request, and its count of attempts.

    202, 503 with a retry type (such as ``model_not_ready``) and refused connections are
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
        elif status_code in (401, 403):
            msg = "the service's endpoint refused the request's credentials (HTTP %d: %s); it takes the token it was " \
                  "started with (see the service's endpoint_auth), from this run's environment" % (
                      status_code, err_msg or err_type or "no message")
        elif err_type in FATAL_TYPES:
            msg = "the service cannot answer: %s (%s). Its model did not load; read the container log, fix the " \
                  "model, and start the service again" % (err_type, err_msg)
        elif status_code == 400:
            msg = "the service rejected the request as invalid (%s: %s); fix the request" % (err_type, err_msg)
        else:
            msg = "the service failed with HTTP %d (%s: %s); see its log" % (
                status_code, err_type or "no type", err_msg)
        raise TaoInferenceError(msg, status=status_code, error_type=err_type, error_message=err_msg)


def send(client, retry, body, timeout, pause=time.sleep, timed_out=None):
    """POST a request to ``retry.url`` until an answer ends it; return ``(status, json)`` of the 200.

    ``retry`` (a :class:`Retry`) decides what is retried and counts the attempts, so the count
    is there after a failure too. The rest are what differs between callers:

    - ``body``: the JSON body as bytes, or a callable returning ``(content, headers)`` afresh
      for each attempt (a streamed body can be read once only);
    - ``timeout``: the seconds an attempt may take, or a callable asked before each attempt
      (a batch deadline shortens the last ones);
    - ``pause(seconds)``: waits before the next attempt; it may raise instead, to give up;
    - ``timed_out()``: the error raised when an attempt takes too long; by default
      ``retry.timed_out(timeout)``.

    Raises :class:`TaoInferenceError` for 4xx/5xx answers, fatal states and time-outs.
    """
    while True:
        retry.attempts += 1
        content, headers = body() if callable(body) else (body, JSON_HEADERS)
        try:
            response = client.post(retry.url, content=content, headers=headers,
                                   timeout=timeout() if callable(timeout) else timeout)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            pause(retry.unreachable(exc))
            continue
        except httpx.TimeoutException:
            raise timed_out() if timed_out is not None else retry.timed_out(timeout)
        data = answer_json(response)
        wait = retry.answered(response.status_code, data)
        if wait is None:
            return response.status_code, data
        pause(wait)


def content_of(data):
    """The answer's text (``choices[0].message.content``) of a 200."""
    try:
        return data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TaoInferenceError("the service answered 200 without choices[0].message.content: %s"
                                % json.dumps(data)[:300], error_type="bad_answer")


def finish_reason_of(data):
    """``choices[0].finish_reason`` of a 200, or None."""
    return (data.get("choices") or [{}])[0].get("finish_reason")
