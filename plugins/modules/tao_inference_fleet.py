#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: tao_inference_fleet
short_description: One view of the TAO inference services of many hosts, reachable from the controller
version_added: 0.1.0
description:
  - Runs on the controller (C(delegate_to=localhost), C(run_once)). Merges what
    M(tao.inference.tao_inference_info) found on each inventory host into one list of every service on
    every host (RV(services)), hosts that could not be asked listed as C(unreachable).
  - Gives each service a RV(services[].controller_url), the URL it answers at from the controller. A
    service on another address than the host's loopback is reached there directly (its platform's own
    URL, or the host's C(ansible_host) when it binds C(0.0.0.0)). A service on the host's loopback (the
    default) is reached through an SSH forward from the controller's loopback to the host's port,
    opened with the host's C(ansible_host), C(ansible_user), C(ansible_port),
    C(ansible_ssh_private_key_file) and C(ansible_ssh_common_args), kept while it runs, and recorded in
    the controller's registry (by pid, start time and command line) so that a later run, or
    O(state=absent), stops exactly that process.
  - With O(state=absent), closes the forwards of O(job_ids) (the services a stop stopped on their hosts).
  - The C(tao.inference.registry_facts) role calls it; playbooks rarely need to.
author:
  - tao.inference maintainers (@tao-inference)
extends_documentation_fragment:
  - tao.inference.common
  - tao.inference.attributes.action_group
attributes:
  check_mode:
    description: Merges and reports the forwards it would open or close; opens and closes nothing.
    support: full
  diff_mode:
    description: Nothing to show.
    support: none
  idempotent:
    description: A second run keeps the live forwards (C(changed=false)); a dead one is replaced.
    support: full
options:
  state:
    description:
      - V(present) merges the view and keeps a forward for each running service on a host's loopback; it
        also closes the forwards of services that a reachable host no longer runs.
      - V(absent) closes the forwards of O(job_ids).
    type: str
    choices: [present, absent]
    default: present
  hosts:
    description:
      - One item per inventory host (the C(tao.inference.registry_facts) role builds them from C(hostvars)); a
        host given twice is refused.
    type: list
    elements: dict
    default: []
    suboptions:
      inventory_host:
        description: The host's inventory name.
        type: str
        required: true
      reachable:
        description: False when the host could not be reached; it is listed as C(unreachable).
        type: bool
        default: true
      error:
        description:
          - Why it could not be asked. A reachable host with an error (its registry could not be read) is listed
            with C(state=error).
        type: str
      services:
        description: The RV(tao.inference.tao_inference_info#module:services) the host returned.
        type: list
        elements: dict
        default: []
      connection:
        description:
          - The host's C(ansible_host), C(ansible_user), C(ansible_port), C(ansible_ssh_private_key_file),
            C(ansible_ssh_common_args) and C(ansible_connection).
          - Each is validated before it reaches an ssh command line, and no value may start with C(-).
            C(ansible_ssh_common_args) is split as a shell would split it (no shell runs) and may hold only
            C(-4), C(-6), C(-C), C(-q), C(-i), C(-p), C(-l), C(-J) and C(-o) with options that cannot run a
            command or share the connection (C(ProxyCommand), C(LocalCommand), C(ControlPath),
            C(ForwardAgent)... are refused).
          - V(ansible_connection=local) means the host is the controller; its services need no forward.
        type: dict
        default: {}
      forward:
        description:
          - This host's own choice of O(forward) (the C(tao.inference.inference_service) role passes each host's
            C(inference_service_controller_forward)); unset, O(forward) decides.
        type: bool
  missing_hosts:
    description:
      - Inventory hosts of the play that published nothing (they failed or were unreachable before); each is
        listed as C(unreachable).
    type: list
    elements: str
    default: []
  close_stale:
    description:
      - With O(state=present), close the forwards of services that a host given in O(hosts) no longer lists
        (it was stopped or pruned). Set V(false) when O(hosts) holds only some of a host's services.
    type: bool
    default: true
  forward:
    description: Open forwards for services on a host's loopback (V(false) lists them without a C(controller_url)).
    type: bool
    default: true
  job_ids:
    description: With O(state=absent), the services whose forwards to close.
    type: list
    elements: str
    default: []
  inventory_host:
    description:
      - With O(state=absent), close only forwards to this inventory host (the role passes the host whose stop
        reported O(job_ids), so that a host's answer never closes a forward to another host).
    type: str
requirements:
  - Python 3.8 or newer and an OpenSSH client (C(ssh)) on the host that runs the module (the controller), which
    must reach each host's C(ansible_host) and C(ansible_port) over SSH with its key, in batch mode.
notes:
  - The forwards are processes of the controller, tracked in the controller's registry (O(registry_path));
    on AWX or Automation Platform they end with the job's container, and the next view opens them again.
seealso:
  - module: tao.inference.tao_inference_info
  - module: tao.inference.tao_inference_request
"""

EXAMPLES = r"""
- name: Gather every host's services into one view (what the registry_facts role does)
  tao.inference.tao_inference_fleet:
    hosts: >-
      {{ ansible_play_hosts_all | map('extract', hostvars, 'registry_facts_host') | list }}
  delegate_to: localhost
  run_once: true
  register: fleet

- name: Close the forwards of stopped services
  tao.inference.tao_inference_fleet:
    state: absent
    job_ids: ["6f1c1f5e-4f7e-4c39-9d59-0c3c8d8f9b1e"]
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
services:
  description: Every service on every host, and one row per unreachable host.
  returned: state=present
  type: list
  elements: dict
  contains:
    host:
      description: The inventory host.
      type: str
    machine:
      description: The machine the service runs on (its hostname).
      type: str
    job_id:
      description: The service's job_id (null for an unreachable host).
      type: str
    name:
      description: Its name, or null.
      type: str
    network_arch:
      description: Its arch.
      type: str
    platform:
      description: Its platform.
      type: str
    state:
      description: What its platform says (V(running), V(exited), V(missing)...), V(unreachable) for a host that
        could not be reached, or V(error) for a host whose registry could not be read or that listed a service
        the checks refuse (none of its services is listed), and for a job_id that two machines both list as their
        own (neither is used; the row names both hosts).
      type: str
    ready:
      description: Whether it answered ready.
      type: bool
    readiness:
      description: Its readiness reason; for an unreachable host or an error row, why.
      type: str
    host_url:
      description: Its URL on its host.
      type: str
    controller_url:
      description: Its URL from the controller (null when it cannot take requests from here).
      type: str
    started_at:
      description: When it started.
      type: str
    forwarded:
      description: True when the controller reaches it through a forward (RV(services[].controller_url) is the
        forward's loopback end).
      type: bool
    endpoint_auth:
      description:
        - For a service whose endpoint takes a token (a Lepton endpoint), C(scheme) (V(bearer)), C(source) (the
          environment variable the token comes from) and C(binding), a one-way proof binding that token to the
          service's job_id, RV(services[].host_url) and C(source) (never the token); else null.
          M(tao.inference.tao_inference_request) sends the token only where the binding holds.
      type: dict
  sample:
    - {host: gpu1, machine: gpu1, job_id: 6f1c1f5e-4f7e-4c39-9d59-0c3c8d8f9b1e, name: eval, network_arch: cosmos-rl,
       platform: local-docker, state: running, ready: true, readiness: ready, host_url: "http://localhost:8080",
       controller_url: "http://127.0.0.1:8081", forwarded: true, endpoint_auth: null,
       started_at: "2026-01-01T00:00:00.000000Z"}
    - {host: gpu2, state: unreachable, readiness: "Failed to connect to the host via ssh", job_id: null}
table:
  description: The view as lines of text, a header and one line per row (host, job_id, name, arch, state, ready,
    controller_url; for an unreachable host, why).
  returned: state=present
  type: list
  elements: str
unreachable_hosts:
  description: The inventory hosts that could not be asked.
  returned: state=present
  type: list
  elements: str
opened:
  description: job_ids whose forward was opened (or would be, in check mode).
  returned: state=present
  type: list
  elements: str
closed:
  description: job_ids whose forward was closed.
  returned: always
  type: list
  elements: str
errors:
  description:
    - Services whose forward could not be opened, and hosts whose connection variables were refused
      (C(job_id) null), each with why. Everything else is still listed; their services have no C(controller_url).
  returned: state=present
  type: list
  elements: dict
"""

from ansible_collections.tao.inference.plugins.module_utils import fleet, procs
from ansible_collections.tao.inference.plugins.module_utils.common import REGISTRY_ARGS, new_module, open_registry, run
from ansible_collections.tao.inference.plugins.module_utils.trust import check_job_id


def main():
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        hosts=dict(type="list", elements="dict", default=[], options=dict(
            inventory_host=dict(type="str", required=True),
            reachable=dict(type="bool", default=True),
            error=dict(type="str"),
            services=dict(type="list", elements="dict", default=[]),
            connection=dict(type="dict", default={}),
            forward=dict(type="bool"),
        )),
        forward=dict(type="bool", default=True),
        missing_hosts=dict(type="list", elements="str", default=[]),
        close_stale=dict(type="bool", default=True),
        job_ids=dict(type="list", elements="str", default=[]),
        inventory_host=dict(type="str"),
    )
    argument_spec.update(REGISTRY_ARGS)
    module = new_module(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    registry = open_registry(module)

    def action():
        if params["state"] == "absent":
            job_ids = [check_job_id(j) for j in params["job_ids"]]
            host = params["inventory_host"]
            if module.check_mode:
                forwards = registry.read().forwards()
                closed = [j for j in job_ids if j in forwards and host in (None, forwards[j]["inventory_host"])]
            else:
                closed = fleet.close_forwards(registry, job_ids, host)
            return {"changed": bool(closed), "closed": closed}
        with procs.interruptible():  # a cancelled job (SIGTERM) leaves every forward it opened recorded
            return fleet.view(registry, params["hosts"], params["forward"], module.check_mode,
                              missing=params["missing_hosts"], close_stale=params["close_stale"])

    run(module, action)


if __name__ == "__main__":
    main()
