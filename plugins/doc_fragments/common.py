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

    # Reaching a Slurm cluster and shaping its jobs (platform: slurm).
    SLURM = r"""
options:
  slurm_login_host:
    description:
      - O(platform=slurm) only, required there. The cluster's login host, where C(sbatch),
        C(squeue) and C(scancel) run, reached with C(ssh) in batch mode (keys or an agent, no
        password prompt). The service is reached through an SSH tunnel from this host's
        C(127.0.0.1:host_port) to the job's node.
      - The submit step runs under C(sh) whatever the login shell is, with umask 077; job logs go to
        C(~/.tao-inference/<job_id>.log) there (folder mode 0700, logs 0600), read by the same user.
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
      - V(pyxis) and V(apptainer) containers share the node's network, so two services on one node
        cannot both listen on 8080. When the server takes C(--port) (tao-dataservices, cosmos-predict2.5),
        the batch script gives it the first port from 8080 to 8199 that nothing listens on, held with a lock
        file for the job's life. cosmos-rl has no port option and always listens on 8080; a second cosmos-rl
        job on the same node fails at once and its log says why. V(docker) runs each container in its
        own network and publishes a free port (see O(slurm_bind_address)).
      - Container variables never appear on a command line. V(pyxis) and V(docker) get their names
        only, V(apptainer) gets C(APPTAINERENV_<NAME>) variables, all from the job's environment.
    type: str
    choices: [pyxis, apptainer, docker]
    default: pyxis
  sbatch_options:
    description:
      - Extra C(sbatch) options, each as V(--name) or V(--name=value), e.g. V(--exclusive) or
        V(--constraint=a100).
      - Options the collection sets itself, or that would break how it finds, reads and stops the job, are
        refused, also when abbreviated. They are C(--comment), C(--output), C(--error), C(--input),
        C(--open-mode), C(--export), C(--export-file), C(--get-user-env), C(--wrap), C(--array), C(--chdir),
        C(--ntasks), C(--parsable), C(--uid) and C(--gid).
    type: list
    elements: str
    default: []
  slurm_bind_address:
    description:
      - O(slurm_container_runtime=docker) only. The address of the compute node on which C(docker run)
        publishes the service's port (C(-p <address>::8080), a free port chosen by Docker).
      - The default V(0.0.0.0) publishes on every interface of the node, so anyone who can reach the node
        can reach the service. Give the node address that the login host reaches (the SSH tunnel goes from
        the login host to this address) to publish on that interface only. V(127.0.0.1) works only when the
        login host is the compute node itself.
      - Any other value than V(0.0.0.0) is refused with the V(pyxis) and V(apptainer) runtimes, whose
        containers share the node's network, where the server chooses its own address.
    type: str
    default: 0.0.0.0
"""
