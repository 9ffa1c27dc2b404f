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
      - Longest pause between two readiness polls, in seconds. Polls start 10 ms apart and grow
        by a fifth each time up to this value, so a fast service is noticed quickly and a slow one is
        not flooded.
    type: float
    default: 0.5
"""

    # Reaching a Slurm cluster and shaping its jobs (platform: slurm).
    SLURM = r"""
options:
  slurm_login_host:
    description:
      - O(platform=slurm) only, required there. The cluster's login host, where C(sbatch),
        C(squeue) and C(scancel) run, reached with C(ssh) in batch mode (keys or an agent, no
        password prompt). The service is reached through an SSH tunnel from this host's
        C(127.0.0.1:host_port) to the job's node.
    type: str
  slurm_user:
    description:
      - SSH user on the login host (default from the ssh configuration).
    type: str
  ssh_key_path:
    description:
      - Private key for the login host, or for the host of an C(ssh://) O(docker_host).
    type: path
  ssh_port:
    description:
      - SSH port of the login host.
    type: int
  ssh_config:
    description:
      - An ssh client configuration file (C(ssh -F)) that describes how to reach the login host,
        or the host of an C(ssh://) O(docker_host).
    type: path
  partition:
    description:
      - Slurm partition. Default C(SLURM_PARTITION) from the environment, else the cluster's default.
    type: str
  account:
    description:
      - Slurm account. Default C(SLURM_ACCOUNT) from the environment, else none.
    type: str
  time_limit:
    description:
      - Slurm time limit (C(--time)), e.g. V(04:00:00).
    type: str
  slurm_container_runtime:
    description:
      - How the job runs the container. V(pyxis) uses C(srun --container-image) (enroot),
        V(apptainer) uses C(apptainer exec docker://...), V(docker) uses C(docker run) on the node
        (the batch script removes the container when the job is cancelled).
    type: str
    choices: [pyxis, apptainer, docker]
    default: pyxis
  sbatch_options:
    description:
      - Extra C(sbatch) options, each as V(--name) or V(--name=value), e.g. V(--exclusive) or
        V(--constraint=a100).
    type: list
    elements: str
    default: []
"""
