#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: tao_inference_info
short_description: List TAO inference services with their live state
version_added: 0.1.0
description:
  - Lists the services in the registry with what their platform says now (container running,
    exited, missing) and, for running ones, their readiness (C(ready), C(model_loading),
    C(model_load_failed)...).
  - It changes nothing, as an C(_info) module must (C(changed) is always false); it never writes the
    registry and never stops a tunnel or a port forward. To drop the entries of services that are gone
    and release what this host still holds for them (the SSH tunnel of a Slurm job cancelled elsewhere),
    use M(tao.inference.tao_inference_prune).
  - With O(watch_from), waits until the readiness of one service differs from that value, so a
    playbook can show a long start as it progresses.
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
    description: Reads as usual (it changes nothing in either mode).
    support: full
  diff_mode:
    description: Nothing to show.
    support: none
  idempotent:
    description: Changes nothing.
    support: full
options:
  job_id:
    description:
      - Only this service (V(latest) for the most recently started one). A job_id is the UUID the
        collection gave the service.
    type: str
  name:
    description:
      - Only services with this name.
    type: str
  watch_from:
    description:
      - With O(job_id) or O(name), wait until the service's readiness reason (or platform state)
        is no longer this value, the service is ready, or O(watch_timeout) passes.
    type: str
  watch_timeout:
    description:
      - Longest wait for O(watch_from), in seconds.
    type: float
    default: 30
requirements:
  - Python 3.8 or newer on the host that runs the module.
  - To see a service's live state, what its platform needs there, as for
    M(tao.inference.tao_inference_service) (access to the Docker engine, an C(ssh) client, the C(brev) CLI,
    the Python packages C(kubernetes) or C(httpx)).
seealso:
  - module: tao.inference.tao_inference_service
  - module: tao.inference.tao_inference_prune
"""

EXAMPLES = r"""
- name: List every service
  tao.inference.tao_inference_info:
  register: info

- name: Show them
  ansible.builtin.debug:
    msg: "{{ item.job_id }} {{ item.network_arch }} {{ item.host_url }} ready={{ item.ready }}"
  loop: "{{ info.services }}"

- name: Forget services whose containers are gone (a module that reports changed)
  tao.inference.tao_inference_prune:
    all: true
"""

RETURN = r"""
services:
  description: One item per registry entry, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    job_id:
      description: The job_id.
      type: str
    network_arch:
      description: The arch.
      type: str
    host_url:
      description: Base URL.
      type: str
    chat_url:
      description: Chat completions URL.
      type: str
    running:
      description: Whether the platform runs it (null when the platform cannot be asked).
      type: bool
    ready:
      description: Whether it answered ready just now.
      type: bool
    readiness:
      description: The readiness observation (C(state), C(reason), C(message), C(http_status)), or null.
      type: dict
    platform_status:
      description:
        - What the platform says (C(state) running/pending/exited/missing/unknown, C(detail), C(exit_code)).
        - For slurm also C(slurm_state) and C(tunnel_alive) (false when the SSH tunnel process is gone).
        - While the platform keeps the service waiting, C(reason) says why when it tells (for slurm, the job's
          pending reason as C(squeue) gives it, such as V(Resources), V(Priority) or V(ReqNodeNotAvail)). O(watch_from)
          then compares the state together with its reason, so a new reason ends the wait too.
      type: dict
    log_tail:
      description: The last log lines of a service that failed to load or is gone (secret values masked).
      type: list
      elements: str
    latest:
      description: Whether this is the registry's C(latest).
      type: bool
    status:
      description: V(started), or V(starting) while a start is under way (or was interrupted).
      type: str
    abandoned:
      description:
        - For a V(starting) entry only. True when the run that was starting it is gone (killed, or its
          controller lost); stop it with O(tao.inference.tao_inference_service#module:state=absent) and its job_id, or
          start it again by name, which replaces it.
      type: bool
    stop_error:
      description: Why the last stop could not be confirmed (the service may still run); absent otherwise.
      type: str
latest:
  description: The job_id C(latest) points at, or null.
  returned: always
  type: str
rejected:
  description:
    - Registry entries that failed validation (a bad URL, an unknown platform, a host that starts with
      C(-)...). They are never acted on and never dropped; inspect the file and delete them by hand.
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The entry's key in the file.
      type: str
    problem:
      description: What is wrong with it.
      type: str
"""

import os

from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.common import REGISTRY_ARGS, new_module, open_registry, run
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.trust import check_job_id
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager


def main():
    argument_spec = dict(
        job_id=dict(type="str"),
        name=dict(type="str"),
        watch_from=dict(type="str"),
        watch_timeout=dict(type="float", default=30),
    )
    platform_spec = platforms.argument_spec()
    argument_spec.update(platform_spec)
    argument_spec.update(REGISTRY_ARGS)
    module = new_module(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("job_id", "name")],
    )
    params = module.params
    manager = ServiceManager(open_registry(module), os.environ,
                             dict((option, params[option]) for option in platform_spec))

    def action():
        if params["job_id"]:
            check_job_id(params["job_id"], allow_latest=True)
        if params["watch_from"] is not None:
            selector = params["job_id"] or params["name"]
            if not selector:
                raise TaoInferenceError("watch_from needs job_id or name to say which service to watch")
            targets = manager.resolve(manager.registry.read(), params["job_id"], params["name"])
            if len(targets) != 1:
                raise TaoInferenceError("watch_from needs exactly one service; %s matches %d" % (selector, len(targets)))
            return manager.watch(targets[0]["job_id"], params["watch_from"], params["watch_timeout"])
        return manager.info(job_id=params["job_id"], name=params["name"])

    run(module, action, manager.close)


if __name__ == "__main__":
    main()
