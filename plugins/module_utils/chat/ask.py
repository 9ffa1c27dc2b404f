# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one tao_inference_request task does: route it, then send one request or a batch.

The task's options arrive as the module's ``params``; what the module itself provides
(check mode, its temp folder, its warnings) is passed in, so this runs without a module too.

The chat package, one file per concern (its ``__init__.py`` stays empty, as ansible-test sanity of
ansible-core 2.17 requires):

- ``routing``: which service a request goes to (and the job_id / name / latest selector the service
  modules share);
- ``sampling``: the sampling values sent, their defaults, what each network_arch accepts;
- ``media``: images and videos (local files, http(s) URLs, data: URIs) and their MIME types;
- ``messages``: the message list and the JSON body of one request;
- ``sending``: the one send-and-retry loop, for a single request and for each request of a batch;
- ``saving``: answers written to files (videos from data: URIs, the JSON Lines of a batch);
- ``batch``: many requests at once, with bounded concurrency, results in input order, a summary;
- ``ask``: what one tao_inference_request task does with the above.
"""

import json
import os
import time
import uuid

from ansible_collections.tao.inference.plugins.module_utils import catalog, fleet, readiness
from ansible_collections.tao.inference.plugins.module_utils.chat import batch
from ansible_collections.tao.inference.plugins.module_utils.chat.messages import build_body, build_messages
from ansible_collections.tao.inference.plugins.module_utils.chat.routing import resolve_target
from ansible_collections.tao.inference.plugins.module_utils.chat.saving import prepare_outputs, save_answer
from ansible_collections.tao.inference.plugins.module_utils.chat import sending
from ansible_collections.tao.inference.plugins.module_utils.chat.sending import (
    Retry, content_of, finish_reason_of, send,
)
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

try:
    import httpx
except ImportError:  # the request module reports it with missing_required_lib
    httpx = None

BATCH_ONLY = ("output_path", "return_content_max", "deadline")


def is_batch(params):
    return params["requests"] is not None or params["requests_file"] is not None


def misplaced_option(params):
    """The message for an option that applies to a batch only, given with a single request; else None."""
    if not is_batch(params):
        for option in BATCH_ONLY:
            if params[option] is not None:
                return "%s applies to a batch only (requests or requests_file)" % option
        if params.get("resume"):
            return "resume applies to a batch only (requests or requests_file, with output_path)"
    return None


def ask(state, params, check_mode=False, tmpdir=None, warn=None):
    """Send the task's request (or batch) to the service it routes to, in registry ``state`` (or, with
    ``fleet``, in that view of many hosts); return the task result. ``warn(text)`` reports a warning
    (sampling the server ignores)."""
    if params.get("spread") and params.get("fleet") is None:
        raise TaoInferenceError("spread sends a batch over the services of a fleet: give fleet (the services "
                                "list of the registry_facts role, registry_facts_fleet) and network_arch")
    if params.get("fleet") is not None:
        return ask_fleet(params, check_mode, tmpdir, warn)
    entry = resolve_target(state, params["job_id"], params["network_arch"], params["name"])
    arch = entry["network_arch"]
    if params["network_arch"] and params["network_arch"] != arch:
        raise TaoInferenceError("job %s runs %s, not %s" % (entry["job_id"], arch, params["network_arch"]))
    result = {"changed": False, "job_id": entry["job_id"], "network_arch": arch, "host_url": entry["host_url"]}
    # The endpoint's token when its platform asks for one: from this run's environment, and only to the
    # URL its registry entry binds it to (checked in check mode too).
    headers = readiness.endpoint_headers(entry, os.environ)
    send_it = send_batch if is_batch(params) else send_one
    return send_it(params, catalog.chat_url_of(entry), arch, result, check_mode, tmpdir, warn or (lambda text: None),
                   headers)


def ask_fleet(params, check_mode=False, tmpdir=None, warn=None):
    """Route across a fleet's view (rows of tao_inference_fleet): to one service by job_id, name or arch,
    or, with ``spread``, a batch over every service of the arch that can take requests. Requests go to
    each service's ``controller_url``."""
    rows = fleet.checked_view(params["fleet"])
    warn = warn or (lambda text: None)
    if params.get("spread"):
        if not is_batch(params):
            raise TaoInferenceError("spread applies to a batch (requests or requests_file)")
        if params["job_id"] or not params["network_arch"]:
            raise TaoInferenceError("spread sends a batch to every service of one arch: give network_arch (and "
                                    "name to keep to the services of that name), not job_id")
        arch = params["network_arch"]
        # Each service's token (its platform may ask for one) is checked before anything is sent; a service
        # whose token cannot go to it is left out (and said so), so one bad row does not stop the others.
        targets, taken, left_out = [], [], []
        for r in fleet.spread_targets(rows, arch, params["name"]):
            try:
                headers = fleet.endpoint_headers(r, os.environ) or None
            except TaoInferenceError as exc:
                left_out.append({"job_id": r["job_id"], "host": r["host"], "reason": exc.msg})
                warn("service %s on %s is left out of the spread: %s" % (r["job_id"], r["host"], exc.msg))
                continue
            targets.append(batch.Target(catalog.chat_url_of({"host_url": r["controller_url"]}), headers=headers,
                                        tags={"job_id": r["job_id"], "host": r["host"]}))
            taken.append(r)
        if not targets:
            raise TaoInferenceError("no %s service of the fleet can take this batch: %s" % (arch, "; ".join(
                "%s on %s: %s" % (item["job_id"], item["host"], item["reason"]) for item in left_out)),
                left_out=left_out)
        result = {"changed": False, "network_arch": arch, "left_out": left_out,
                  "services": [dict((k, r[k]) for k in ("job_id", "host", "name", "controller_url")) for r in taken]}
        return send_batch(params, targets, arch, result, check_mode, tmpdir, warn)
    row = fleet.pick(rows, params["job_id"], params["name"], params["network_arch"])
    result = {"changed": False, "job_id": row["job_id"], "network_arch": row["network_arch"], "host": row["host"],
              "host_url": row.get("host_url"), "controller_url": row["controller_url"]}
    headers = fleet.endpoint_headers(row, os.environ)
    send_it = send_batch if is_batch(params) else send_one
    return send_it(params, catalog.chat_url_of({"host_url": row["controller_url"]}), row["network_arch"], result,
                   check_mode, tmpdir, warn, headers)


def _counts(records):
    ok = sum(1 for r in records if r["status"] == "ok")
    return {"total": len(records), "ok": ok, "failed": len(records) - ok}


def _timeout(params):
    return max(float(params["timeout"]), 1.0)


def send_one(params, url, arch, result, check_mode, tmpdir, warn, headers=None):
    """One request: the answer in the result (or saved under output_dir); ``headers`` go with it."""
    messages = build_messages(arch, params["prompt"], params["system_prompt"], params["media"], params["messages"])
    body, applied, warnings = build_body(arch, messages, params["sampling"])
    for warning in warnings:
        warn(warning)
    result["sampling_applied"] = applied
    if check_mode:
        return result
    if params["output_dir"]:
        prepare_outputs(output_dir=params["output_dir"])
    timeout = _timeout(params)
    started = time.monotonic()
    with httpx.Client(timeout=timeout, headers=headers, trust_env=sending.proxies_allowed(url, headers)) as client:
        retry = Retry(url, params["wait_timeout"])
        status, data = send(client, retry, json.dumps(body).encode("utf-8"), timeout)
    content = content_of(data)
    result.update(
        content=content,
        status=status,
        finish_reason=finish_reason_of(data),
        elapsed=round(time.monotonic() - started, 3),
        attempts=retry.attempts,
    )
    if params["output_dir"]:
        stem = "%s-%s" % (time.strftime("%Y%m%dT%H%M%S"), uuid.uuid4().hex[:8])
        saved = save_answer(content, params["output_dir"], stem)
        if saved:
            result.update(content=None, content_path=saved, changed=True)
    return result


def send_batch(params, url, arch, result, check_mode, tmpdir, warn, headers=None):
    """A batch: every result in input order, and the summary; ``headers`` go with every request."""
    requests, base_dir = params["requests"], None
    if params["requests_file"]:
        requests = batch.load_requests_file(params["requests_file"])
        base_dir = os.path.dirname(os.path.abspath(params["requests_file"]))
    options = batch.Options(
        concurrency=params["concurrency"], timeout=_timeout(params),
        wait_timeout=params["wait_timeout"], deadline=params["deadline"],
        return_content_max=params["return_content_max"], output_path=params["output_path"],
        output_dir=params["output_dir"], fail_on_item_error=params["fail_on_item_error"],
        system_prompt=params["system_prompt"], base_dir=base_dir, tmpdir=tmpdir, resume=params.get("resume"))
    outcome = batch.run(url, arch, requests, params["sampling"], options, check_mode=check_mode, headers=headers)
    for warning in outcome["warnings"]:
        warn(warning)
    result.update(changed=outcome["changed"], sampling_applied=outcome["sampling_applied"],
                  results=outcome["results"], summary=outcome["summary"])
    if isinstance(url, list) and not check_mode:  # a spread batch: what each service answered
        result["summary"]["services"] = [dict(target.tags, **_counts(
            [r for r in outcome["results"] if r.get("job_id") == target.tags["job_id"]])) for target in url]
    if params["output_path"] and not check_mode:
        result["output_path"] = params["output_path"]
    return result
