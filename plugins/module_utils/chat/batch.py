# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Batch requests: many chat requests to one service, with bounded concurrency.

Every item is checked first (sampling, media and messages, exactly as a single
request is), and nothing is sent unless all are valid. Then ``concurrency``
threads share one ``httpx.Client`` connection pool, so at most that many requests
are in flight; each goes through the same send-and-retry loop as a single request
(:func:`sending.send`), all under an optional deadline. Results come back in input
order, with a summary of counts and timings.

With ``output_path``, each answer is appended to that JSON Lines file as it arrives
(:class:`saving.ResultsFile`); with ``resume``, items the file already answered (same ``id``
and prompt) are taken from it and not sent again, so an interrupted evaluation keeps its work.

Local media files go through a :class:`media.MediaStore`: each distinct file is
encoded once and streamed into every body that carries it, so memory stays flat
with large videos. Its temp files are removed at the end, whatever happens.
"""

import collections
import csv
import json
import math
import os
import re
import sys
import time

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.chat.media import MediaStore
from ansible_collections.tao.inference.plugins.module_utils.chat.messages import build_body, build_messages
from ansible_collections.tao.inference.plugins.module_utils.chat.sampling import apply_sampling
from ansible_collections.tao.inference.plugins.module_utils.chat.saving import ResultsFile, prepare_outputs, save_answer
from ansible_collections.tao.inference.plugins.module_utils.chat.sending import (
    FATAL_TYPES, Retry, content_of, finish_reason_of, proxies_allowed, send,
)
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

try:
    import httpx
except ImportError:  # the request module reports it with missing_required_lib
    httpx = None

try:
    import resource
except ImportError:  # not on every platform
    resource = None

ITEM_KEYS = ("id", "prompt", "media", "system_prompt", "messages", "sampling")
CSV_COLUMNS = ("id", "prompt", "media", "system_prompt")
MAX_CONCURRENCY = 256
DEFAULT_CONTENT_MAX = 4000
SHOWN_INVALID = 20


class Options(object):
    """How a batch runs; the defaults are the module's."""

    def __init__(self, concurrency=8, timeout=300.0, wait_timeout=300.0, deadline=None,
                 return_content_max=None, output_path=None, output_dir=None, fail_on_item_error=False,
                 system_prompt=None, base_dir=None, tmpdir=None, resume=False):
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise TaoInferenceError("concurrency must be between 1 and %d, got %s" % (MAX_CONCURRENCY, concurrency))
        if deadline is not None and deadline <= 0:
            raise TaoInferenceError("deadline must be a positive number of seconds, got %s" % deadline)
        if return_content_max is not None and return_content_max < 0:
            raise TaoInferenceError("return_content_max must be 0 or more, got %s" % return_content_max)
        if resume and not output_path:
            raise TaoInferenceError("resume needs output_path: the file whose answered items are skipped")
        self.concurrency = concurrency
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self.deadline = deadline
        self.return_content_max = DEFAULT_CONTENT_MAX if return_content_max is None else return_content_max
        self.output_path = output_path
        self.output_dir = output_dir
        self.fail_on_item_error = fail_on_item_error
        self.system_prompt = system_prompt
        self.base_dir = base_dir
        self.tmpdir = tmpdir
        self.resume = resume


# -- reading items from a file -------------------------------------------------
def load_requests_file(path):
    """The items of a JSON Lines (``.jsonl``, ``.ndjson``) or CSV (``.csv``) file.

    Only the keys (columns) of :data:`ITEM_KEYS` are kept: a dataset may carry
    others, such as reference answers. Empty CSV cells count as absent; a CSV
    ``media`` cell holds one file or URL.
    """
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".jsonl", ".ndjson", ".csv"):
        raise TaoInferenceError("requests_file %s must end in .jsonl, .ndjson or .csv" % path)
    try:
        with open(path, "r", newline="", encoding="utf-8-sig") as handle:
            items = _csv_items(handle, path) if extension == ".csv" else _jsonl_items(handle, path)
    except (IOError, OSError) as exc:
        raise TaoInferenceError("cannot read requests_file %s: %s" % (path, exc))
    if not items:
        raise TaoInferenceError("requests_file %s holds no request" % path)
    return items


def _csv_items(handle, path):
    reader = csv.DictReader(handle)
    if "prompt" not in (reader.fieldnames or []):
        raise TaoInferenceError("requests_file %s has no prompt column (columns: %s)"
                                % (path, ", ".join(reader.fieldnames or []) or "none"))
    return [dict((key, row[key]) for key in CSV_COLUMNS if row.get(key)) for row in reader]


def _jsonl_items(handle, path):
    items = []
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise TaoInferenceError("requests_file %s line %d is not JSON: %s" % (path, number, exc))
        if not isinstance(data, dict):
            raise TaoInferenceError("requests_file %s line %d must be a JSON object" % (path, number))
        items.append(dict((key, data[key]) for key in ITEM_KEYS if key in data))
    return items


# -- checking every item before anything is sent --------------------------------
class Item(object):
    """One checked request: its JSON body as parts (see :meth:`media.MediaStore.split`)."""

    __slots__ = ("index", "id", "prompt", "parts", "applied", "warnings", "stem")

    def __init__(self, index, item_id, prompt, parts, applied, warnings):
        self.index = index
        self.id = item_id
        self.prompt = prompt
        self.parts = parts
        self.applied = applied
        self.warnings = warnings
        self.stem = None


def _item_id(index, raw):
    value = raw.get("id") if isinstance(raw, dict) else None
    return str(index) if value is None or value == "" else str(value)


def _check_one(network_arch, index, raw, sampling, store, options):
    if not isinstance(raw, dict):
        raise TaoInferenceError("each request must be a dict with prompt (or messages), got %s" % type(raw).__name__)
    unknown = sorted(key for key, value in raw.items() if key not in ITEM_KEYS and value is not None)
    if unknown:
        raise TaoInferenceError("unknown key %s; a request takes %s" % (", ".join(unknown), ", ".join(ITEM_KEYS)))
    for key, kind, name in (("prompt", str, "a string"), ("system_prompt", str, "a string"),
                            ("sampling", dict, "a dict"), ("messages", list, "a list")):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise TaoInferenceError("%s must be %s, got %s" % (key, name, type(raw[key]).__name__))
    merged = dict(sampling)
    merged.update(raw.get("sampling") or {})
    media = raw.get("media")
    media = [] if media is None else [media] if isinstance(media, (str, dict)) else list(media)
    system_prompt = raw.get("system_prompt") or (None if raw.get("messages") else options.system_prompt)
    messages = build_messages(network_arch, raw.get("prompt"), system_prompt, media, raw.get("messages"),
                              local_url=store.url, base_dir=options.base_dir)
    body, applied, warnings = build_body(network_arch, messages, merged)
    return Item(index, _item_id(index, raw), raw.get("prompt"), store.split(json.dumps(body)), applied, warnings)


def check_items(network_arch, requests, sampling, store, options):
    """Check every request (routing aside) as a single request would be checked.

    Returns the :class:`Item` list, or raises one error naming every invalid
    item by its id: nothing is sent unless every item is valid.
    """
    items, invalid = [], []
    for index, raw in enumerate(requests):
        try:
            items.append(_check_one(network_arch, index, raw, sampling, store, options))
        except TaoInferenceError as exc:
            invalid.append({"id": _item_id(index, raw), "index": index, "msg": exc.msg})
    seen = {}
    for item in items:
        if item.id in seen:
            invalid.append({"id": item.id, "index": item.index,
                            "msg": "the id is also the id of request %d; ids must be unique" % seen[item.id]})
        seen.setdefault(item.id, item.index)
    if invalid:
        shown = "; ".join("request %s: %s" % (bad["id"], bad["msg"]) for bad in invalid[:SHOWN_INVALID])
        more = " (and %d more)" % (len(invalid) - SHOWN_INVALID) if len(invalid) > SHOWN_INVALID else ""
        raise TaoInferenceError("%d of %d requests are invalid and nothing was sent: %s%s"
                                % (len(invalid), len(requests), shown, more), invalid=invalid)
    _give_stems(items)
    return items


def _give_stems(items):
    """File names for saved answers: the id made safe, with the index when two collide."""
    stems = [re.sub(r"[^A-Za-z0-9._-]+", "_", item.id).strip("._") or "request" for item in items]
    counts = collections.Counter(stems)
    for item, stem in zip(items, stems):
        item.stem = stem if counts[stem] == 1 else "%s-%d" % (stem, item.index)


# -- sending from a pool of threads ---------------------------------------------
def _record(item, attempts, elapsed, **fields):
    record = {"id": item.id, "status": "ok", "http_status": None, "content": None, "content_path": None,
              "finish_reason": None, "error_type": None, "error": None, "elapsed": round(elapsed, 3),
              "attempts": attempts, "sampling_applied": item.applied}
    record.update(fields)
    return record


def _failure(item, error, attempts, elapsed):
    details = error.details
    return _record(item, attempts, elapsed, status="failed", http_status=details.get("status"),
                   error_type=details.get("error_type") or "http_%s" % details.get("status"), error=error.msg)


class Engine(object):
    """Sends checked items to ``url`` from ``concurrency`` threads sharing one connection pool."""

    def __init__(self, url, store, options, headers=None, on_record=None, tags=None):
        self.url = url
        self.tags = tags or {}  # added to every record (a spread batch: the service and host that answered)
        self.on_record = on_record  # called with (item, record) as each item is done, from its thread
        self.store = store
        self.options = options
        self.headers = headers  # e.g. the endpoint's token
        self.deadline = readiness.Deadline(options.deadline) if options.deadline else None
        self.fatal = None  # the first "model did not load" error: items not sent yet are not sent

    def run(self, items):
        limits = httpx.Limits(max_connections=self.options.concurrency,
                              max_keepalive_connections=self.options.concurrency)
        with httpx.Client(limits=limits, headers=self.headers,
                          trust_env=proxies_allowed(self.url, self.headers)) as client:
            with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
                futures = [pool.submit(self._one, client, item) for item in items]
                return [future.result() for future in futures]

    def _refusal(self):
        if self._late():
            return TaoInferenceError("not sent: the batch deadline of %g s had passed" % self.options.deadline,
                                     error_type="deadline")
        if self.fatal is not None:
            return TaoInferenceError("not sent: " + self.fatal.msg, error_type=self.fatal.details["error_type"])
        return None

    def _late(self):
        return self.deadline is not None and self.deadline.expired

    def _too_late(self):
        return TaoInferenceError("the batch deadline of %g s passed before the answer" % self.options.deadline,
                                 error_type="deadline")

    def _one(self, client, item):
        record = self._send(client, item)
        record.update(self.tags)
        if self.on_record is not None:
            self.on_record(item, record)
        return record

    def _send(self, client, item):
        refusal = self._refusal()
        if refusal is not None:
            return _failure(item, refusal, 0, 0.0)
        retry = Retry(self.url, self.options.wait_timeout)
        started = time.monotonic()

        def timed_out():
            return self._too_late() if self._late() else retry.timed_out(self.options.timeout)

        try:
            data = send(client, retry, lambda: self.store.body(item.parts), self._timeout, self._pause, timed_out)[1]
            return self._answer(item, data, retry.attempts, started)
        except TaoInferenceError as exc:
            error = exc
        except (httpx.HTTPError, OSError) as exc:  # a connection lost mid-body, a media file gone
            error = TaoInferenceError("%s: %s" % (exc.__class__.__name__, exc), error_type="transport")
        if error.details.get("error_type") in FATAL_TYPES and self.fatal is None:
            self.fatal = error
        return _failure(item, error, retry.attempts, time.monotonic() - started)

    def _timeout(self):
        """The request timeout, cut short by the deadline (an answer after it is not waited for)."""
        if self.deadline is None:
            return self.options.timeout
        return max(0.001, min(self.options.timeout, self.deadline.remaining()))

    def _pause(self, seconds):
        """Wait before a retry, unless the deadline would pass first."""
        if self.deadline is not None and seconds >= self.deadline.remaining():
            raise self._too_late()
        time.sleep(seconds)

    def _answer(self, item, data, attempts, started):
        content = content_of(data)
        saved = save_answer(content, self.options.output_dir, item.stem) if self.options.output_dir else None
        return _record(item, attempts, time.monotonic() - started, http_status=200,
                       content=None if saved else content, content_path=saved,
                       finish_reason=finish_reason_of(data))


def _resumed(items, answered):
    """``{index: record}`` of the items ``answered`` (read from the results file) already holds: same id,
    same prompt. Their records are the file's lines, marked ``resumed``."""
    done = {}
    for item in items:
        line = answered.get(item.id)
        if line is not None and line.get("prompt") == item.prompt:
            record = _record(item, 0, 0.0)
            record.update((key, line[key]) for key in record if key in line and key != "id")
            record["resumed"] = True
            done[item.index] = record
    return done


class Target(object):
    """One service of a batch spread over several (``spread: true``): its chat URL, the headers its
    requests carry, and the ``tags`` each of its records gets (its job_id and host)."""

    def __init__(self, url, headers=None, tags=None):
        self.url = url
        self.headers = headers
        self.tags = tags or {}


def _run_items(url, store, options, headers, items, on_record=None):
    """Send ``items`` to ``url``; or, with a list of :class:`Target`, give each service its share (every
    n-th item, in input order) and send to all of them at once, each at most ``options.concurrency`` at a
    time. Records in input order."""
    if not isinstance(url, list):
        return Engine(url, store, options, headers, on_record=on_record).run(items)
    shares = [items[i::len(url)] for i in range(len(url))]
    with ThreadPoolExecutor(max_workers=len(url)) as pool:
        futures = [pool.submit(Engine(target.url, store, options, target.headers, on_record=on_record,
                                      tags=target.tags).run, share) for target, share in zip(url, shares)]
        sent = [future.result() for future in futures]
    by_index = dict((item.index, record) for share, records in zip(shares, sent) for item, record in zip(share, records))
    return [by_index[item.index] for item in items]


def _send_all(url, store, options, headers, items, done, results_file):
    """Send the items not ``done``; each record goes to ``results_file`` as it comes. Records in input order.
    ``url``: one chat URL, or a list of :class:`Target` to spread the items over."""
    if results_file is None:
        return _run_items(url, store, options, headers, items)
    results_file.open()
    try:
        sent = _run_items(url, store, options, headers, [item for item in items if item.index not in done],
                          on_record=results_file.append)
        by_index = dict((item.index, record) for item, record in zip(
            [item for item in items if item.index not in done], sent))
        by_index.update(done)
        records = [by_index[item.index] for item in items]
        results_file.finish(items, records)
    finally:
        results_file.close()
    return records


# -- results -------------------------------------------------------------------
def _percentile(ordered, percent):
    if not ordered:
        return None
    return ordered[max(0, int(math.ceil(percent / 100.0 * len(ordered))) - 1)]


def max_rss_mib():
    """Peak resident memory of this process so far, in MiB (None where unknown)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)


def summarize(records, elapsed, concurrency):
    """Counts and timings; items taken from a resumed output_path count as ok, but not in the timings."""
    resumed = sum(1 for r in records if r.get("resumed"))
    latencies = sorted(r["elapsed"] for r in records if r["status"] == "ok" and not r.get("resumed"))
    answered = sum(1 for r in records if r["http_status"] is not None and not r.get("resumed"))
    ok = len(latencies) + resumed
    return {
        "total": len(records),
        "ok": ok,
        "failed": len(records) - ok,
        "resumed": resumed,
        "latency_p50": _percentile(latencies, 50),
        "latency_p95": _percentile(latencies, 95),
        "requests_per_second": round(answered / elapsed, 2) if elapsed > 0 else None,
        "elapsed": round(elapsed, 3),
        "concurrency": concurrency,
        "attempts": sum(r["attempts"] for r in records if not r.get("resumed")),
        "max_rss_mib": max_rss_mib(),
    }


def _shown(record, limit):
    """A record as the task result shows it: content cut to ``limit`` characters."""
    shown = dict(record)
    content = record["content"]
    shown["content_truncated"] = content is not None and len(content) > limit
    if shown["content_truncated"]:
        shown["content"] = content[:limit]
    return shown


def run(url, network_arch, requests, sampling, options, check_mode=False, opener=open, headers=None):
    """Check every request, then (unless ``check_mode``) send them all.

    Returns ``{"results", "summary", "warnings", "changed", "sampling_applied"}``
    (the last for the task-level ``sampling`` alone). ``headers`` go with every request. With
    ``options.fail_on_item_error``, a failed item raises once every item is done
    (the error carries the results and the summary).
    """
    started = time.monotonic()
    applied = apply_sampling(network_arch, sampling)[1]  # the task-level values alone must be valid
    if not requests:
        raise TaoInferenceError("requests holds no request")
    with MediaStore(options.tmpdir, opener) as store:
        items = check_items(network_arch, requests, sampling, store, options)
        warnings = sorted(set(w for item in items for w in item.warnings))
        results_file = ResultsFile(options.output_path, options.resume) if options.output_path else None
        done = _resumed(items, results_file.answered()) if results_file else {}
        if check_mode:
            return {"results": [], "summary": {"total": len(items), "resumed": len(done)}, "warnings": warnings,
                    "changed": False, "sampling_applied": applied}
        prepare_outputs(options.output_dir, options.output_path)
        records = _send_all(url, store, options, headers, items, done, results_file)
        elapsed = time.monotonic() - started
    summary = summarize(records, elapsed, options.concurrency)
    outcome = {"results": [_shown(r, options.return_content_max) for r in records], "summary": summary,
               "warnings": warnings, "sampling_applied": applied,
               "changed": any(not r.get("resumed") for r in records) and bool(
                   options.output_path or any(r["content_path"] for r in records))}
    failed = [r for r in records if r["status"] != "ok"]
    if options.fail_on_item_error and failed:
        raise TaoInferenceError("%d of %d requests failed; the first, request %s: %s"
                                % (len(failed), len(records), failed[0]["id"], failed[0]["error"]),
                                results=outcome["results"], summary=summary)
    return outcome
