#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: tao_inference_prune
short_description: Drop the registry entries of TAO inference services that are gone
version_added: 0.1.0
description:
  - Asks the platform of each selected service whether it still runs. For each one that is gone (its
    container or job exited, or the platform no longer knows it), it releases what this host still holds
    for it (the SSH tunnel of a Slurm job cancelled elsewhere, a Brev tunnel, a Kubernetes port forward),
    removes what the platform kept of it (an exited container, a failed Job with its Service and Secret,
    a Lepton deployment and its secrets, or the Lepton secrets of a deployment deleted in the workspace),
    exactly as O(tao.inference.tao_inference_service#module:state=absent) would, and drops its registry entry.
  - "It only ever acts on entries of this machine: a registry shared between machines (an NFS home) keeps
    the entries of services another machine started, since only that machine can see their platform and
    what it holds for them. It also keeps: a service whose start is under way (its run is alive), a service
    that still runs or is pending, a service whose platform cannot be asked now, and an entry that fails
    validation (see RV(tao.inference.tao_inference_info#module:rejected)). RV(kept) says why."
  - When what is left of a service cannot be removed (the engine is down), its entry stays with
    C(stop_error), the others are pruned, and the task fails naming it.
  - M(tao.inference.tao_inference_info) lists the same services and changes nothing.
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
    description:
      - Asks the platforms as usual and predicts RV(pruned) and C(changed); releases, removes and writes nothing.
        RV(released) and RV(removed) are not predicted (they stay empty).
    support: full
  diff_mode:
    description: The registry entries it drops (before) and what is left of them (after, nothing).
    support: full
  idempotent:
    description: A second run finds nothing gone left to prune (C(changed=false)).
    support: full
options:
  job_id:
    description:
      - Only this service (V(latest) for the most recently started one). A job_id is the UUID the
        collection gave the service.
      - One of O(job_id), O(name) or O(all=true) is required.
    type: str
  name:
    description:
      - Only services with this name.
    type: str
  all:
    description:
      - Every service in the registry (of this machine).
    type: bool
requirements:
  - Python 3.8 or newer on the host that runs the module.
  - To ask a service's platform and release what this host holds for it, what that platform needs there, as
    for M(tao.inference.tao_inference_service) (access to the Docker engine, an C(ssh) client, the C(brev) CLI,
    the Python packages C(kubernetes) or C(httpx)).
seealso:
  - module: tao.inference.tao_inference_info
  - module: tao.inference.tao_inference_service
"""

EXAMPLES = r"""
- name: Drop every service that is gone, and release what this host held for them
  tao.inference.tao_inference_prune:
    all: true
  register: pruned

- name: Say what was dropped
  ansible.builtin.debug:
    msg: "Pruned {{ pruned.pruned | join(', ') or 'nothing' }}"

- name: A Slurm service whose job was cancelled elsewhere (its tunnel is closed too)
  tao.inference.tao_inference_prune:
    name: reason-slurm
    ssh_config: ~/.ssh/config
"""

RETURN = r"""
pruned:
  description: job_ids whose registry entries were dropped (would be, in check mode).
  returned: always
  type: list
  elements: str
released:
  description: job_ids of pruned services for which something this host held (a tunnel, a forward) was stopped.
  returned: always
  type: list
  elements: str
removed:
  description: job_ids of pruned services whose leftover on the platform (an exited container, a failed Job) was removed.
  returned: always
  type: list
  elements: str
kept:
  description: The selected services that were not pruned, each with the reason.
  returned: always
  type: list
  elements: dict
  contains:
    job_id:
      description: The job_id.
      type: str
    name:
      description: Its name, or null.
      type: str
    reason:
      description: Why it was kept (it runs, another machine's, a start under way, its platform cannot be asked...).
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
        all=dict(type="bool"),
    )
    platform_spec = platforms.argument_spec()
    argument_spec.update(platform_spec)
    argument_spec.update(REGISTRY_ARGS)
    module = new_module(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("job_id", "name", "all")],
    )
    params = module.params
    manager = ServiceManager(open_registry(module), os.environ,
                             dict((option, params[option]) for option in platform_spec))

    def action():
        if params["job_id"]:
            check_job_id(params["job_id"], allow_latest=True)
        elif not params["name"] and not params["all"]:
            raise TaoInferenceError("say which services to prune: job_id, name, or all: true for every service "
                                    "of this machine that is gone")
        return manager.prune(job_id=params["job_id"], name=params["name"])

    run(module, action, manager.close)


if __name__ == "__main__":
    main()
