# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The service registry, shared by every module.
    DOCUMENTATION = r"""
options:
  registry_path:
    description:
      - Path of the service registry file on the host that runs the module.
      - A JSON file keyed by job_id, plus C(latest). Every change holds a file lock and replaces
        the file atomically with mode 0600. It never holds a secret value.
      - Set it once for all modules with C(module_defaults) and the group C(group/tao.inference.service).
    type: path
    default: /tmp/tao-inf-ms-state.json
"""

    # Waiting for readiness.
    WAIT = r"""
options:
  wait:
    description:
      - Wait until the service answers ready on C(GET /api/v1/health/readiness).
      - Both the real server's answer (503 with C(reason)) and the documented one (202/503 with
        C(error.type)) are understood. A fatal state (C(model_load_failed), C(initialization_failed),
        C(model_load_error), C(initialization_error)) or a container that exits ends the wait at once.
    type: bool
    default: true
  wait_timeout:
    description:
      - How many seconds to wait for readiness (a monotonic deadline).
    type: float
    default: 900
  wait_sleep:
    description:
      - Longest pause between two readiness polls, in seconds. Polls start 20 ms apart and grow
        by half each time up to this value, so a fast service is noticed quickly and a slow one is
        not flooded.
    type: float
    default: 0.5
"""
