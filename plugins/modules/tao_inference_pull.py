#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: tao_inference_pull
short_description: Pull the image of a TAO inference service on a Docker engine, or watch that pull
version_added: 0.1.0
description:
  - Pulls the image a service of O(network_arch) would run (or O(image)) onto the Docker engine of
    C(platform=local-docker) (the local one, or O(docker_host)), and reports how long it took and how
    much it pulled. An image the engine already has is not pulled (unless O(pull=always)).
  - A pull of the same image on the same engine that another run has under way is joined, not started
    twice; this run waits for it and reports its outcome (C(joined) in RV(pull)).
  - While it pulls, its progress (bytes and layers done and in all) is kept in a state file of the user's
    (C(pulls/) beside the default registry, C(~/.local/state/tao-inference/pulls), mode C(0600), never a
    credential). With O(watch=true) the module only reads it, so that a play can run the pull as an
    C(async) task and show its progress at a steady pace; the C(local_docker) role's C(pull) entry point
    does that. A new pull removes the files of pulls that ended more than 30 days ago.
  - A pull that is cut short (the C(async) timeout, a signal) leaves no process behind, and the next pull
    starts afresh.
author:
  - tao.inference maintainers (@tao-inference)
extends_documentation_fragment:
  - tao.inference.common
  - tao.inference.ssh
  - tao.inference.local_docker
  - tao.inference.slurm
  - tao.inference.kubernetes
  - tao.inference.brev
  - tao.inference.lepton
  - tao.inference.attributes.action_group
attributes:
  check_mode:
    description: Says whether the image would be pulled (C(changed)) and pulls nothing.
    support: full
  diff_mode:
    description: Nothing to show.
    support: none
  idempotent:
    description: A second run finds the image there and pulls nothing (unless O(pull=always)).
    support: full
options:
  platform:
    description:
      - The platform whose engine pulls. Only V(local-docker) (the other platforms pull where the service runs).
    type: str
    choices: [local-docker]
    default: local-docker
  network_arch:
    description:
      - The arch whose image is pulled (resolved as M(tao.inference.tao_inference_service) resolves it).
        One of O(network_arch) and O(image) is required.
    type: str
    choices: [cosmos-predict2.5, cosmos-rl, tao-dataservices]
  image:
    description:
      - The image (absolute URI or C(versions.yaml) key), instead of the one O(network_arch) maps to.
    type: str
  watch:
    description:
      - Pull nothing; wait up to O(watch_timeout) seconds for the pull under way (or that ended last) to
        report, and return its RV(state) and RV(progress).
    type: bool
    default: false
  watch_timeout:
    description:
      - With O(watch=true), how long to wait, in seconds (0.1 to 3600); it returns sooner when the pull ends.
    type: float
    default: 5
requirements:
  - Python 3.8 or newer on the host that runs the module (the managed host), and only its standard library.
  - A Docker engine (API 1.40 or newer, Docker 19.03+) that host can reach, with read and write access to its
    socket (root, or a member of the C(docker) group), or O(docker_host) over C(tcp://) or C(ssh://) (an ssh
    client then).
  - Registry credentials, where the registry needs them, stored with C(docker login) by the user that runs it.
seealso:
  - module: tao.inference.tao_inference_service
  - module: tao.inference.tao_inference_preflight
"""

EXAMPLES = r"""
- name: Pull the image now (the start then finds it there)
  tao.inference.tao_inference_pull:
    network_arch: cosmos-rl
  register: pulled

- name: Say what it took
  ansible.builtin.debug:
    msg: "pulled {{ pulled.pull.bytes | human_readable }} in {{ pulled.pull.seconds }} s"

- name: Pull in the background
  tao.inference.tao_inference_pull:
    network_arch: cosmos-rl
  async: 7200
  poll: 0
  register: pull_job

- name: Show the progress once
  tao.inference.tao_inference_pull:
    network_arch: cosmos-rl
    watch: true
    watch_timeout: 5
  register: progress
"""

RETURN = r"""
image:
  description: The image.
  returned: success
  type: str
image_source:
  description: Where the image came from (option, C(IMAGE_<KEY>), or the mapping).
  returned: success
  type: str
pull:
  description:
    - What this run did. C(pulled) false when the engine had the image (nothing was pulled), C(seconds) the
      pull took, C(bytes) (compressed, as the registry sent them) and C(layers) it had, and C(joined) true
      when another run's pull was waited for.
  returned: O(watch=false), not in check mode
  type: dict
  sample: {pulled: true, seconds: 742.3, bytes: 21474836480, layers: 31, joined: false}
state:
  description:
    - V(pulling), V(done), V(failed), V(interrupted) (the process that pulled is gone) or V(none) (no pull
      of this image on this engine is known).
  returned: O(watch=true)
  type: str
progress:
  description:
    - The pull's C(bytes_done) and C(bytes_total), C(layers_done) and C(layers_total), the engine's last
      C(status) line, and C(seconds) since it began.
  returned: O(watch=true)
  type: dict
  sample: {bytes_done: 1073741824, bytes_total: 21474836480, layers_done: 3, layers_total: 31, seconds: 60.2}
error:
  description: Why the pull failed (V(failed) only).
  returned: O(watch=true)
  type: str
"""

import os
import time

from ansible_collections.tao.inference.plugins.module_utils import pulls
from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.common import REGISTRY_ARGS, new_module, open_registry, run
from ansible_collections.tao.inference.plugins.module_utils.docker_engine import EngineError
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.image import resolve_image
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager


def watch(pull, timeout):
    """Wait until the pull reports (it ends, or ``timeout`` passes); its state and progress."""
    began = time.time()
    deadline = time.monotonic() + timeout
    while True:
        state = pull.read()
        if state is not None and state["state"] != pulls.PULLING and state["updated_at"] >= began:
            break  # it ended while this run watched
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    if state is None:
        # The documented progress keys, all zero (not the keys of a pull's outcome).
        return {"state": "none", "progress": {"bytes_done": 0, "bytes_total": 0, "layers_done": 0, "layers_total": 0,
                                              "status": "", "seconds": 0.0}, "error": None}
    progress = dict(state["progress"], seconds=state["seconds"])
    if state["state"] == pulls.PULLING and state["updated_at"]:
        progress["seconds"] = round(state["seconds"] + max(0.0, time.time() - state["updated_at"]), 1)
    return {"state": state["state"], "progress": progress, "error": state["error"]}


def main():
    platform_spec = platforms.argument_spec()
    argument_spec = dict(
        platform=dict(type="str", choices=["local-docker"], default="local-docker"),
        network_arch=dict(type="str", choices=["cosmos-predict2.5", "cosmos-rl", "tao-dataservices"]),
        image=dict(type="str"),
        watch=dict(type="bool", default=False),
        watch_timeout=dict(type="float", default=5),
    )
    argument_spec.update(REGISTRY_ARGS)
    argument_spec.update(platform_spec)
    module = new_module(argument_spec=argument_spec, supports_check_mode=True,
                        required_one_of=[("network_arch", "image")])
    params = module.params
    manager = ServiceManager(open_registry(module, read_only=True), os.environ,
                             dict((option, params[option]) for option in platform_spec))

    def action():
        if not 0.1 <= params["watch_timeout"] <= 3600:
            raise TaoInferenceError("watch_timeout must be from 0.1 to 3600 seconds, got %s" % params["watch_timeout"])
        image, source = resolve_image(params["network_arch"], os.environ, override=params["image"])
        driver = manager.driver(params["platform"])
        result = {"changed": False, "image": image, "image_source": source}
        if params["watch"]:
            result.update(watch(pulls.Pull(driver.host, image), params["watch_timeout"]))
            return result
        if module.check_mode:
            result["changed"] = params["pull"] == "always" or not driver.has_image(image)
            return result
        try:
            result["pull"] = driver.ensure_image(image)
        except EngineError as exc:
            raise TaoInferenceError(str(exc))
        result["changed"] = result["pull"]["pulled"]
        return result

    run(module, action, manager.close)


if __name__ == "__main__":
    main()
