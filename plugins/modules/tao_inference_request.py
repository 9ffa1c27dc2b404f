#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

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
author:
  - tao.inference maintainers (@tao-inference)
extends_documentation_fragment:
  - tao.inference.common
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
      - The user's text. Required unless O(messages) is given.
    type: str
  system_prompt:
    description:
      - An optional system message.
    type: str
  media:
    description:
      - Images or videos for the user message. Each is an C(http(s)://) URL, a C(data:<mime>;base64,...)
        URI, or a file on the host that runs the module (sent as a data URI with the MIME type its
        extension implies). Extensions and MIME types are checked against what the arch accepts.
      - cosmos-rl needs at least one image or video in every request.
      - "An item may be a dict V({url: ..., type: image|video}) for a URL without a file extension."
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
"""

RETURN = r"""
content:
  description: The answer, C(choices[0].message.content). For cosmos-predict2.5 a C(data:video/mp4;base64,...) URI.
  returned: success, not in check mode
  type: str
status:
  description: HTTP status of the answer.
  returned: success, not in check mode
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
  description: Every sampling field sent, its value, and whether it was the default.
  returned: always
  type: list
  elements: dict
  sample:
    - {field: max_tokens, value: 1024, default: true}
    - {field: temperature, value: 0.2, default: false}
finish_reason:
  description: C(choices[0].finish_reason).
  returned: success, not in check mode
  type: str
elapsed:
  description: Seconds from sending to the answer, retries included.
  returned: success, not in check mode
  type: float
attempts:
  description: How many times the request was sent (retries while loading).
  returned: success, not in check mode
  type: int
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.tao.inference.plugins.module_utils import catalog, chat
from ansible_collections.tao.inference.plugins.module_utils.common import REGISTRY_ARGS, run
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry

try:
    import httpx
    HAS_HTTPX = True
    HTTPX_IMPORT_ERROR = None
except ImportError:
    import traceback
    HAS_HTTPX = False
    HTTPX_IMPORT_ERROR = traceback.format_exc()


def main():
    argument_spec = dict(
        job_id=dict(type="str"),
        name=dict(type="str"),
        network_arch=dict(type="str", choices=list(catalog.NETWORK_ARCHS)),
        prompt=dict(type="str"),
        system_prompt=dict(type="str"),
        media=dict(type="list", elements="raw", default=[]),
        messages=dict(type="list", elements="dict"),
        sampling=dict(type="dict", required=True),
        timeout=dict(type="float", default=300),
        wait_timeout=dict(type="float", default=300),
    )
    argument_spec.update(REGISTRY_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("job_id", "name"), ("messages", "prompt"), ("messages", "media"),
                            ("messages", "system_prompt")],
        required_one_of=[("prompt", "messages")],
    )
    if not HAS_HTTPX:
        module.fail_json(msg=missing_required_lib("httpx"), exception=HTTPX_IMPORT_ERROR)
    params = module.params

    def action():
        state = Registry(params["registry_path"], check_mode=True).read()
        entry = chat.resolve_target(state, params["job_id"], params["network_arch"], params["name"])
        arch = entry["network_arch"]
        if params["network_arch"] and params["network_arch"] != arch:
            raise TaoInferenceError("job %s runs %s, not %s" % (entry["job_id"], arch, params["network_arch"]))
        messages = chat.build_messages(arch, params["prompt"], params["system_prompt"], params["media"],
                                       params["messages"])
        body, applied, warnings = chat.build_body(arch, messages, params["sampling"])
        for warning in warnings:
            module.warn(warning)
        result = {"changed": False, "job_id": entry["job_id"], "network_arch": arch,
                  "host_url": entry["host_url"], "sampling_applied": applied}
        if module.check_mode:
            return result
        timeout = max(float(params["timeout"]), 1.0)
        started = time.monotonic()
        with httpx.Client(timeout=timeout) as client:
            status, data, attempts = chat.send(client, chat.chat_url_of(entry), body, timeout, params["wait_timeout"])
        result.update(
            content=chat.content_of(data),
            status=status,
            finish_reason=(data.get("choices") or [{}])[0].get("finish_reason"),
            elapsed=round(time.monotonic() - started, 3),
            attempts=attempts,
        )
        return result

    run(module, action)


if __name__ == "__main__":
    main()
