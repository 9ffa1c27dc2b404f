# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # platform: slurm. Options of the driver plugins/module_utils/platforms/slurm.py.
    DOCUMENTATION = r"""
options:
  slurm_login_host:
    description:
      - With C(platform=slurm) only, required there. The cluster's login host, where C(sbatch),
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
  ssh_port:
    description:
      - SSH port of the login host.
    type: int
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
        C(--ntasks), C(--parsable), C(--uid), C(--gid), C(--clusters) and C(--cluster) (jobs go to the login
        host's default cluster, the one every later C(squeue), C(scontrol) and C(scancel) asks).
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
