#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: tao_inference_request
short_description: Send a chat request to a running TAO inference microservice
version_added: 0.1.0
description:
  - Sends an OpenAI-style C(POST /v1/chat/completions) to a service from the registry and
    returns the answer.
  - "Routing: O(job_id) when given (it must exist); else O(name); else O(network_arch) (exactly one
    such service, or the module fails listing every candidate); else the only running service.
    With several services and no choice the module fails listing job_id, arch, url and start
    time of each: it never falls back to C(latest) silently."
  - "Sampling: O(sampling) is required and holds the values the user chose. Fields left out
    take their defaults, and the result says which values were defaults. C({}) accepts every
    default, and must be given explicitly. Fields the arch does not support are refused, and
    fields of another arch (C(guidance) sent to a cosmos-rl service) fail before anything is sent."
  - Retries answers that mean "still loading" (202, 503 C(model_not_ready)) until O(wait_timeout);
    400, 500 and fatal 503 answers fail with the server's error type and message.
  - "Batch: with O(requests) (or O(requests_file)) the module sends many requests to the chosen
    service, at most O(concurrency) at a time over one connection pool, and returns every result
    in input order with a RV(summary). Every item is checked (sampling, media, messages) before the
    first one is sent; an invalid item fails the task naming its id, and nothing is sent. A request
    that fails at the service is reported in its result and fails the task only with
    O(fail_on_item_error=true). A local media file is read and base64-encoded once however many
    items use it, and request bodies are streamed, so memory stays flat with large videos."
author:
  - tao.inference maintainers (@tao-inference)
extends_documentation_fragment:
  - tao.inference.common
  - tao.inference.attributes.action_group
attributes:
  check_mode:
    description: Validates routing, sampling and media, then sends nothing.
    support: full
  diff_mode:
    description: Nothing to show.
    support: none
  idempotent:
    description: Each run sends a request.
    support: none
options:
  job_id:
    description:
      - The service to ask. V(latest) means the most recently started service (only when given).
        A job_id is the UUID the collection gave the service.
      - A service whose start has not finished yet (or was interrupted) is refused with a message
        that says which, never sent to.
    type: str
  name:
    description:
      - The service to ask, by the name it was started with.
    type: str
  network_arch:
    description:
      - Ask the one service running this arch. Fails listing the candidates when there are several.
    type: str
    choices: [cosmos-predict2.5, cosmos-rl, tao-dataservices]
  prompt:
    description:
      - The user's text. Required unless O(messages), O(requests) or O(requests_file) is given.
    type: str
  system_prompt:
    description:
      - An optional system message. With O(requests), the system message of the items that give none.
    type: str
  media:
    description:
      - Images or videos for the user message. Each is an C(http(s)://) URL, a C(data:<mime>;base64,...)
        URI, or a file on the host that runs the module (sent as a data URI with the MIME type its
        extension implies). Extensions and MIME types are checked against what the arch accepts.
      - cosmos-rl needs at least one image or video in every request.
      - "An item may be a dict V({url: ..., type: image|video}) for a URL without a file extension."
      - Every media is refused before anything is sent when its extension or MIME type is not one the
        arch accepts, when it is larger than 512 MiB, or when it is a cloud URI (C(s3://), C(gs://)...).
    type: list
    elements: raw
    default: []
  messages:
    description:
      - A full OpenAI-style message list instead of O(prompt)/O(system_prompt)/O(media).
        Only the first user message (and the first system message) is used by the service.
    type: list
    elements: dict
  sampling:
    description:
      - "The sampling values the user chose, e.g. V({max_tokens: 256, temperature: 0.2})."
      - "Base fields: C(max_tokens) (8192), C(top_p) (0.8), C(temperature) (0.7, range 0-2).
        cosmos-rl: C(max_tokens) default 1024 (the server ignores C(temperature) and C(top_p): they are
        sent when given, with a warning). cosmos-predict2.5: C(max_tokens) is the number of output
        frames (77), plus C(guidance) (0-7, 7), C(num_steps) (35), C(seed) (0), C(negative_prompt);
        C(temperature) and C(top_p) are refused. tao-dataservices: C(max_tokens) 1024."
      - A field that is absent, null or an empty string takes its default.
    type: dict
    required: true
  requests:
    description:
      - A batch of requests to send to the chosen service, instead of one O(prompt) or O(messages).
      - Results come back in this order, in RV(results), each with its O(requests[].id).
    type: list
    elements: dict
    suboptions:
      id:
        description:
          - A name for the item, unique in the batch, given back with its result (a string; numbers
            are turned into strings). Default its position, V(0), V(1)...
        type: raw
      prompt:
        description:
          - The user's text.
        type: str
      media:
        description:
          - Images or videos for this item, as for O(media); a single string is one file or URL.
        type: raw
      system_prompt:
        description:
          - A system message for this item (default O(system_prompt)).
        type: str
      messages:
        description:
          - A full message list for this item, as for O(messages), instead of its prompt and media.
        type: list
        elements: dict
      sampling:
        description:
          - Sampling values for this item, merged over the task-level O(sampling) (its own fields win).
            Checked like O(sampling).
        type: dict
  requests_file:
    description:
      - A JSON Lines (C(.jsonl), C(.ndjson)) or CSV (C(.csv)) file of requests on the host that runs
        the module, instead of O(requests).
      - "JSON Lines: one object a line with the keys of O(requests). CSV: a header line, then columns
        C(prompt) and, optionally, C(id), C(media) (one file or URL) and C(system_prompt). Other
        keys and columns (reference answers...) are ignored."
      - Relative media paths are taken relative to the file's folder.
    type: path
  concurrency:
    description:
      - How many requests of a batch may be in flight at once (1 to 256).
    type: int
    default: 8
  deadline:
    description:
      - Seconds the whole batch may take once sending starts. Requests still waiting for an answer
        then fail with error type C(deadline), and requests not sent yet are not sent.
      - Default no deadline beyond O(timeout) and O(wait_timeout) for each request.
    type: float
  fail_on_item_error:
    description:
      - Fail the task when any request of the batch failed (after every request is done and
        O(output_path) is written). By default a failed request is only reported in its result.
    type: bool
    default: false
  return_content_max:
    description:
      - With a batch, at most this many characters of each answer are returned in RV(results)
        (the result then says C(content_truncated)). The full answers go to O(output_path).
      - Default 4000. V(0) returns no answer text at all.
    type: int
  output_path:
    description:
      - Write every full answer of a batch to this JSON Lines file on the host that runs the module,
        one object a line (C(id), C(prompt) and the keys of RV(results)). Missing folders are made.
      - Each answer is appended as it arrives and flushed to disk, so a batch that is cut short (a
        signal, a lost controller) keeps every answer it got. Once the batch is done the file is
        rewritten atomically in input order, one line per request, keeping its mode (a new file gets the
        user's umask), so a private file stays private.
      - Without O(resume), an existing file is started afresh. It must be a regular file of the user
        running the module (not a folder, a symbolic link, a FIFO or another user's file).
    type: path
  resume:
    description:
      - With O(output_path), skip the requests the file already answered (a line with C(status=ok) and
        the same C(id) and C(prompt)) and send only the others, appending their answers; an evaluation
        that was interrupted picks up where it stopped. Give each request an C(id); without one, its
        position in the batch is its id.
      - The skipped requests are in RV(results) with C(resumed=true), as the file holds them, and
        RV(summary.resumed) counts them. A half-written last line (a run killed mid-write) is dropped.
    type: bool
    default: false
  fleet:
    description:
      - "Route across a fleet instead of this host's registry: the list of services the
        C(tao.inference.registry_facts) role publishes as C(registry_facts_fleet) (the RV(tao.inference.tao_inference_fleet#module:services)
        of M(tao.inference.tao_inference_fleet)). Run the module on the controller. O(job_id), O(name) or
        O(network_arch) choose one service of any host (several matches fail, listing each candidate with
        its host), and the request goes to its C(controller_url)."
      - Every row is checked (job_ids, arches, URLs) before anything is sent; hosts listed as unreachable
        are left out.
      - A service whose endpoint takes a token (a Lepton endpoint, C(endpoint_auth) in its row) gets the token
        from this run's environment (C(LEPTON_WORKSPACE_TOKEN) or C(LEPTON_ENDPOINT_TOKEN), as its row's
        C(endpoint_auth.source) says), only when the row's binding proves that token was given to that service at
        that URL and the controller reaches it there (never through a forward); else nothing is sent to it. A
        request to one service then fails; a O(spread) batch leaves that service out (a warning, and
        RV(left_out)) and goes to the others, failing only when none is left.
    type: list
    elements: dict
  spread:
    description:
      - With O(fleet) and a batch, send the batch over every service of O(network_arch) (and of O(name)
        when given) that can take requests and whose endpoint token, if it takes one, can be sent to it (see
        O(fleet) and RV(left_out)), on every host, at once. Each service gets its share (every
        n-th request, in input order) and at most O(concurrency) of its requests are in flight at a time.
      - Every result carries the C(job_id) and C(host) that answered it, and RV(summary.services) counts
        each service's share.
    type: bool
    default: false
  output_dir:
    description:
      - Save answers that are C(data:) URIs (cosmos-predict2.5's C(data:video/mp4;base64,...)) as files
        in this folder (made when missing) instead of returning them inline; the result then holds the
        path in C(content_path) and C(content) is null. A batch item's file is named after its id
        (C(<id>.mp4)); a single request's file gets a unique name.
    type: path
  timeout:
    description:
      - Seconds to wait for one answer (generation can be slow).
    type: float
    default: 300
  wait_timeout:
    description:
      - Seconds to keep retrying while the service is still loading (202, 503 C(model_not_ready),
        connection refused).
    type: float
    default: 300
requirements:
  - Python 3.8 or newer and the Python package C(httpx) (0.27 or newer) on the host that runs the module,
    which must reach the service's URL (a service on platform C(slurm) or C(brev) through its tunnel on
    that host).
seealso:
  - module: tao.inference.tao_inference_service
"""

EXAMPLES = r"""
- name: Ask the only running service about an image, accepting every sampling default
  tao.inference.tao_inference_request:
    prompt: What is in this picture?
    media:
      - /data/frames/frame_0001.png
    sampling: {}
  register: answer

- name: Print the answer
  ansible.builtin.debug:
    var: answer.content

- name: Ask a named tao-dataservices service with chosen sampling values
  tao.inference.tao_inference_request:
    name: my-llm
    system_prompt: You are terse.
    prompt: Summarise the report.
    sampling:
      max_tokens: 128
      temperature: 0

- name: Generate a video with cosmos-predict2.5
  tao.inference.tao_inference_request:
    network_arch: cosmos-predict2.5
    prompt: A robot arm stacks red cubes.
    sampling:
      max_tokens: 33
      guidance: 5
      seed: 7

- name: Evaluate a checkpoint on a batch of clips, 16 at a time
  tao.inference.tao_inference_request:
    name: reason-eval
    sampling: {max_tokens: 256}
    concurrency: 16
    requests:
      - id: clip-0001
        prompt: What happens in this clip?
        media: /data/clips/0001.mp4
      - id: clip-0002
        prompt: Describe the clip in detail.
        media: /data/clips/0002.mp4
        sampling: {max_tokens: 512}
    output_path: /data/eval/answers.jsonl
  register: batch

- name: Print the summary
  ansible.builtin.debug:
    var: batch.summary

- name: Generate videos from a CSV of prompts and save them as files
  tao.inference.tao_inference_request:
    network_arch: cosmos-predict2.5
    requests_file: /data/eval/prompts.csv
    sampling: {}
    output_dir: /data/eval/videos
    fail_on_item_error: true
"""

RETURN = r"""
host:
  description: With O(fleet), the inventory host of the service that answered.
  returned: with O(fleet), without O(spread)
  type: str
controller_url:
  description: With O(fleet), the URL the request was sent to (the service's URL from the controller).
  returned: with O(fleet), without O(spread)
  type: str
services:
  description: With O(spread), the services the batch was spread over.
  returned: with O(spread)
  type: list
  elements: dict
  sample: [{job_id: 6f1c1f5e-4f7e-4c39-9d59-0c3c8d8f9b1e, host: gpu1, name: eval, controller_url: "http://127.0.0.1:8081"}]
left_out:
  description: With O(spread), the services of the arch that were left out because their endpoint's token could not
    be sent to them (none in this run's environment, another token, a row whose binding does not hold), and why.
  returned: with O(spread)
  type: list
  elements: dict
  sample: [{job_id: 0b6c1f5e-4f7e-4c39-9d59-0c3c8d8f9b1e, host: gpu2, reason: "service ... export LEPTON_ENDPOINT_TOKEN and run again"}]
content:
  description:
    - The answer, C(choices[0].message.content). For cosmos-predict2.5 a C(data:video/mp4;base64,...) URI.
    - Null when O(output_dir) saved it as a file (see RV(content_path)).
  returned: success of a single request, not in check mode
  type: str
content_path:
  description: The file O(output_dir) saved a C(data:) answer to.
  returned: success of a single request with O(output_dir), when the answer was a data URI
  type: str
status:
  description: HTTP status of the answer.
  returned: success of a single request, not in check mode
  type: int
job_id:
  description: The service that answered.
  returned: always
  type: str
network_arch:
  description: Its arch.
  returned: always
  type: str
host_url:
  description: Its base URL.
  returned: always
  type: str
sampling_applied:
  description:
    - Every sampling field sent, its value, and whether it was the default.
    - With a batch, the task-level O(sampling) alone; each item's own values are in RV(results).
  returned: always
  type: list
  elements: dict
  sample:
    - {field: max_tokens, value: 1024, default: true}
    - {field: temperature, value: 0.2, default: false}
finish_reason:
  description: C(choices[0].finish_reason).
  returned: success of a single request, not in check mode
  type: str
elapsed:
  description: Seconds from sending to the answer, retries included.
  returned: success of a single request, not in check mode
  type: float
attempts:
  description: How many times the request was sent (retries while loading).
  returned: success of a single request, not in check mode
  type: int
results:
  description:
    - One result per request of the batch, in input order (empty in check mode). Every key is present
      in every result (null when it does not apply).
  returned: with O(requests) or O(requests_file)
  type: list
  elements: dict
  contains:
    id:
      description: The request's id.
      type: str
    status:
      description: V(ok), or V(failed) (see C(error_type) and C(error)).
      type: str
    job_id:
      description: With O(spread), the service that was sent this request.
      type: str
    host:
      description: With O(spread), the inventory host of that service.
      type: str
    http_status:
      description: HTTP status of the last answer; null when none came (unreachable, deadline...).
      type: int
    content:
      description: The answer, cut to O(return_content_max) characters; null when failed or saved to a file.
      type: str
    content_truncated:
      description: Whether C(content) was cut.
      type: bool
    content_path:
      description: The file O(output_dir) saved a C(data:) answer to.
      type: str
    finish_reason:
      description: C(choices[0].finish_reason).
      type: str
    error_type:
      description:
        - Why it failed. The service's own type (C(invalid_request), C(internal_error), C(model_load_error),
          C(model_loading) when still loading after O(wait_timeout)...), or C(unreachable), C(timeout),
          C(deadline), C(transport), C(bad_answer), C(http_<status>).
      type: str
    error:
      description: What went wrong and what to do, naming the service's own message.
      type: str
    elapsed:
      description: Seconds from the first attempt to the answer, retries included.
      type: float
    attempts:
      description: How many times it was sent (0 when it never was).
      type: int
    resumed:
      description: Present and true when the answer was taken from O(output_path) with O(resume), not sent again.
      type: bool
    sampling_applied:
      description: Every sampling field sent for this item, its value, and whether it was the default.
      type: list
      elements: dict
  sample:
    - id: clip-0001
      status: ok
      http_status: 200
      content: A robot arm picks up a red cube.
      content_truncated: false
      content_path: null
      finish_reason: stop
      error_type: null
      error: null
      elapsed: 1.92
      attempts: 1
      sampling_applied: [{field: max_tokens, value: 256, default: false}]
summary:
  description: Counts and timings of the batch. In check mode only C(total).
  returned: with O(requests) or O(requests_file)
  type: dict
  contains:
    total:
      description: Requests in the batch.
      type: int
    ok:
      description: Requests answered with a 200.
      type: int
    failed:
      description: Requests that failed.
      type: int
    latency_p50:
      description: Median C(elapsed) of the answered requests, in seconds.
      type: float
    latency_p95:
      description: 95th percentile of C(elapsed) of the answered requests, in seconds.
      type: float
    requests_per_second:
      description: Requests that got an answer (of any status), per second of C(elapsed).
      type: float
    elapsed:
      description: Seconds the batch took, from checking the first request to the last answer.
      type: float
    concurrency:
      description: The O(concurrency) used.
      type: int
    attempts:
      description: Requests sent, retries included.
      type: int
    resumed:
      description: Requests taken from O(output_path) with O(resume) (not sent again); they count as C(ok).
      type: int
    max_rss_mib:
      description: Peak resident memory of the module's process, in MiB.
      type: float
    services:
      description: With O(spread), each service's C(job_id), C(host), and its C(total), C(ok) and C(failed) requests.
      type: list
      elements: dict
  sample:
    {total: 256, ok: 255, failed: 1, latency_p50: 0.021, latency_p95: 0.034, requests_per_second: 640.5,
     elapsed: 0.4, concurrency: 16, attempts: 256, max_rss_mib: 61.2}
output_path:
  description: The JSON Lines file the full answers were written to.
  returned: with a batch and O(output_path), not in check mode
  type: str
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.chat.ask import ask, misplaced_option
from ansible_collections.tao.inference.plugins.module_utils.chat.sending import HTTPX_IMPORT_ERROR
from ansible_collections.tao.inference.plugins.module_utils.common import REGISTRY_ARGS, new_module, open_registry, run
from ansible_collections.tao.inference.plugins.module_utils.trust import check_job_id

REQUEST_ITEM = dict(
    id=dict(type="raw"),
    prompt=dict(type="str"),
    media=dict(type="raw"),
    system_prompt=dict(type="str"),
    messages=dict(type="list", elements="dict"),
    sampling=dict(type="dict"),
)


def main():
    argument_spec = dict(
        job_id=dict(type="str"),
        name=dict(type="str"),
        network_arch=dict(type="str", choices=list(catalog.NETWORK_ARCHS)),
        prompt=dict(type="str"),
        system_prompt=dict(type="str"),
        media=dict(type="list", elements="raw", default=[]),
        messages=dict(type="list", elements="dict"),
        requests=dict(type="list", elements="dict", options=REQUEST_ITEM),
        requests_file=dict(type="path"),
        concurrency=dict(type="int", default=8),
        deadline=dict(type="float"),
        fail_on_item_error=dict(type="bool", default=False),
        return_content_max=dict(type="int"),
        output_path=dict(type="path"),
        resume=dict(type="bool", default=False),
        output_dir=dict(type="path"),
        sampling=dict(type="dict", required=True),
        timeout=dict(type="float", default=300),
        wait_timeout=dict(type="float", default=300),
        fleet=dict(type="list", elements="dict"),
        spread=dict(type="bool", default=False),
    )
    argument_spec.update(REGISTRY_ARGS)
    batch_args = ("requests", "requests_file")
    module = new_module(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("job_id", "name"), ("messages", "prompt"), ("messages", "media"),
                            ("messages", "system_prompt"), batch_args]
        + [(single, many) for single in ("prompt", "messages", "media") for many in batch_args],
        required_one_of=[("prompt", "messages") + batch_args],
    )
    if HTTPX_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("httpx"), exception=HTTPX_IMPORT_ERROR)
    params = module.params
    misplaced = misplaced_option(params)
    if misplaced:
        module.fail_json(msg=misplaced)
    registry = open_registry(module, read_only=True)

    def action():
        if params["job_id"]:
            check_job_id(params["job_id"], allow_latest=True)
        return ask(registry.read(), params, module.check_mode, module.tmpdir, module.warn)

    run(module, action)


if __name__ == "__main__":
    main()
