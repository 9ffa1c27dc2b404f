# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # The service registry, shared by every module.
    DOCUMENTATION = r"""
options:
  registry_path:
    description:
      - Path of the service registry file on the host that runs the module.
      - By default it is per user, C($XDG_STATE_HOME/tao-inference/registry.json), else
        C(~/.local/state/tao-inference/registry.json); a folder the module creates is mode 0700.
      - A JSON file keyed by job_id, plus C(latest). Every change holds a file lock and replaces
        the file atomically with mode 0600. It never holds a secret value.
      - It is treated as untrusted data. The file and its lock are never followed through a
        symbolic link, and are refused when another user owns them or group/others may write them
        (or their folder). Every entry is validated before use, and an entry that fails is reported
        in C(rejected) by M(tao.inference.tao_inference_info), never acted on. An ssh configuration or
        key recorded in an entry is used only when this run passes the same option.
      - Set it once for all modules with C(module_defaults) and the group C(group/tao.inference.service).
      - In an AWX / Automation Platform job (an execution environment), the module runs in a container
        removed when the job ends, and the default path is inside it. Set this to a file on a persistent
        volume mounted into the execution environment, or run the module on a managed host; the module
        warns when the registry is on the container's own root, a tmpfs, C(/runner) or an C(emptyDir).
    type: path
  lock_timeout:
    description:
      - Longest wait, in seconds, for the registry's file lock; then the module fails and says so.
      - Each run holds the lock for milliseconds (one read, or one port reservation and one write),
        so even 32 starts at once wait well under a second. The default leaves room for a registry
        on a slow network home folder, and still ends a run stuck behind a lock held by a hung process.
    type: float
    default: 30
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
      - Longest pause between two readiness polls, in seconds. Polls start 10 ms apart and grow
        by a fifth each time up to this value, so a fast service is noticed quickly and a slow one is
        not flooded.
    type: float
    default: 0.5
"""
