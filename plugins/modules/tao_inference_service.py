#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: tao_inference_service
short_description: Start or stop a TAO inference microservice
version_added: 0.1.0
description:
  - Starts a network-specific TAO inference microservice (C(cosmos-rl), C(cosmos-predict2.5),
    C(tao-dataservices)) behind an HTTP endpoint, records it in the service registry, and waits
    until it is ready; or stops it and tidies the registry.
  - The container image comes from C(<network_arch>.config.json), the image mapping and
    C(versions.yaml); C(IMAGE_<KEY>) in the environment (e.g. C(IMAGE_COSMOS_RL)) overrides it.
  - Returns the registry entry (C(job_id), C(host_url), C(host_port), C(started_at)...) and C(chat_url).
  - "With O(name) the module is idempotent: a running service with the same spec is left alone
    (C(changed=false)); a changed spec stops the old service and starts a new one (new job_id).
    Without O(name) every run starts a fresh service."
  - When a start fails (the model does not load, the container exits, readiness times out)
    the container is removed and the registry entry dropped; the error carries the reason
    and the last lines of the container log.
  - Secret values (C(HF_TOKEN) and the other names in O(secret_env)) are read from the
    environment of the host that runs the module, or given in O(secrets), and handed only to the
    container's environment. They never appear in the command line, the registry, labels, results or diffs.
author:
  - tao.inference maintainers (@tao-inference)
extends_documentation_fragment:
  - tao.inference.common
  - tao.inference.common.wait
  - tao.inference.ssh
  - tao.inference.local_docker
  - tao.inference.slurm
  - tao.inference.kubernetes
  - tao.inference.brev
  - tao.inference.lepton
  - tao.inference.attributes.action_group
attributes:
  check_mode:
    description: Predicts C(changed); starts, stops and writes nothing.
    support: full
  diff_mode:
    description: Shows the registry entry before and after (it never holds a secret).
    support: full
  idempotent:
    description: >-
      With O(name), or with O(state=absent): stopping a service that is gone is C(changed=false)
      and only drops its registry entry.
    support: partial
options:
  state:
    description:
      - V(present) starts the service (or keeps a matching one); V(absent) stops it.
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - A stable name for the service. Makes O(state=present) idempotent and lets
        O(state=absent) find the service without its job_id.
    type: str
  job_id:
    description:
      - The service to stop with O(state=absent). The literal V(latest) means the most recently
        started service, and is accepted only when given explicitly.
      - A job_id is the lower-case UUID the collection gave the service; anything else is refused.
        Only platform objects that carry the collection's labels (or, on Slurm, the user's own jobs
        whose comment names this job_id) are ever stopped, even when the registry has no entry.
      - When the platform cannot confirm the stop (e.g. C(scancel) fails), the entry stays in the
        registry with C(stop_error), so the service is never forgotten while it may still run.
    type: str
  network_arch:
    description:
      - The network architecture; picks the image, the inner command and the request rules.
      - Required with O(state=present).
    type: str
    choices: [cosmos-predict2.5, cosmos-rl, tao-dataservices]
  model_path:
    description:
      - The checkpoint. V(hf_model://<org>/<model>) (HuggingFace Hub; export C(HF_TOKEN) for gated
        models) or an absolute path inside the container (mount it with O(volumes)).
      - Cloud URIs (C(s3://), C(gs://), C(az://), C(cs://), C(aws://)) and C(hf://) are refused.
      - Required with O(state=present).
    type: str
  platform:
    description:
      - Where the service runs. V(local-docker) is a Docker engine (this machine's, or O(docker_host)),
        V(slurm) a batch job through a cluster's login host, V(kubernetes) a Job and a Service in a
        cluster, V(brev) a container on an NVIDIA Brev instance (through its Docker engine over SSH),
        V(lepton) an endpoint (a deployment) in a DGX Cloud Lepton workspace, reached at its own URL.
    type: str
    choices: [local-docker, slurm, kubernetes, brev, lepton]
    default: local-docker
  num_gpus:
    description:
      - GPUs to give the service. V(0) is allowed for CPU-only images such as the bundled
        reference microservice. With 1 or more, the Docker engine must have the NVIDIA runtime
        (checked before anything starts).
    type: int
    default: 1
  image:
    description:
      - Image override, as an absolute URI or a C(versions.yaml) dotted key
        (e.g. V(tao_toolkit.cosmos_rl)). Takes precedence over C(IMAGE_<KEY>).
    type: str
  host_port:
    description:
      - Host port bound to the container's port 8080. Default is the lowest free port from 8080
        (8080-8199), chosen under the registry lock and skipping ports other programs hold, so
        concurrent starts never collide.
    type: int
  env:
    description:
      - Extra non-secret environment variables for the container. Secret names (C(HF_TOKEN),
        C(WANDB_API_KEY), ...) and C(TAO_LOGGING_SERVER_URL)/C(TAO_ADMIN_KEY) are refused.
    type: dict
    default: {}
  secret_env:
    description:
      - Names (never values) of secret variables to pass from the environment of the host that
        runs the module to the container, e.g. V([HF_TOKEN]). Each must be set, to a value of 4 characters or
        more (a shorter one could not be masked in messages and is refused).
      - Default is C(HF_TOKEN) when O(model_path) is an V(hf_model://) model and C(HF_TOKEN) is set.
      - A name may not be in both O(secret_env) and O(secrets).
    type: list
    elements: str
  secrets:
    description:
      - Secret variables for the container given as values, e.g. from an AWX / Automation Platform
        credential or Ansible Vault, as a mapping of variable names (e.g. C(HF_TOKEN)) to values. Ansible
        never logs this option.
      - They travel exactly as O(secret_env) values do (the container's environment through the Engine API
        body, the Slurm job's exported environment over ssh's stdin, a Kubernetes Secret, Lepton secrets),
        never on a command line, in the registry, a label, a result, a diff or a log. The registry and the
        result's RV(secret_env) list their names only.
      - A name given here and in O(secret_env) or O(env) is refused. Values must be strings of 4 characters or
        more (a shorter one could not be masked in messages and is refused; a value that is no secret goes in O(env)).
      - The value is not part of the spec's fingerprint (nothing about it is stored), so a changed value
        alone does not recreate a service started with O(name); stop it (O(state=absent)) and start it
        again to hand over a new value.
    type: dict
  volumes:
    description:
      - Host folders to mount, as V(/host/path:/container/path[:ro|rw]), e.g. for a local checkpoint.
    type: list
    elements: str
    default: []
  model_key:
    description:
      - cosmos-predict2.5 with an V(hf_model://) O(model_path) only; the registered model key
        passed as C(--model).
    type: str
    choices: [base-2b, base-14b, auto-multiview]
  server_options:
    description:
      - "Optional server flags for the arch, e.g. V({idle_timeout_minutes: 30}) or
        V({disable_guardrails: true}) for cosmos-predict2.5. Unknown keys are refused with the list
        of valid ones."
    type: dict
    default: {}
  shm_size:
    description:
      - Size of C(/dev/shm) in the container.
    type: str
    default: 16g
  inventory_host:
    description:
      - The inventory name of the host the module runs for, recorded in the registry entry beside the
        machine's own name (RV(machine)), so a fleet's view says which inventory host runs what. The
        C(tao.inference.inference_service) role passes C(inventory_hostname).
      - It does not choose where the service runs, and is not part of the spec (changing it does not
        recreate a service).
    type: str
requirements:
  - Python 3.8 or newer on the host that runs the module (the managed host; C(localhost) in the demo).
  - For local-docker, a Docker engine (API 1.40 or newer, Docker 19.03+) that host can reach, with read and write
    access to its socket (root, or a member of the C(docker) group), or O(docker_host) over C(tcp://) or
    C(ssh://). The module speaks the Engine API itself; no Python Docker library is needed.
  - An C(ssh) client on that host for C(ssh://) engines, platform C(slurm) (the login host and the tunnel)
    and platform C(brev) (the instance's engine and the tunnel).
  - For platform C(brev), the C(brev) CLI on that host, logged in.
  - For platform C(kubernetes), the Python package C(kubernetes) (28 or newer) on that host.
  - For platform C(lepton), the Python package C(httpx) on that host.
notes:
  - The container runs C(/bin/sh -c "umask 0 && <server command>") under an init, named after
    the job_id, labelled C(tao.inference.*).
seealso:
  - module: tao.inference.tao_inference_request
  - module: tao.inference.tao_inference_info
"""

EXAMPLES = r"""
- name: Start a cosmos-rl service and wait until it is ready
  tao.inference.tao_inference_service:
    name: reason-eval
    network_arch: cosmos-rl
    model_path: hf_model://nvidia/Cosmos-Reason1-7B
    num_gpus: 1
  register: svc

- name: Show where it answers
  ansible.builtin.debug:
    msg: "{{ svc.job_id }} answers at {{ svc.chat_url }} (host port {{ svc.host_port }})"

- name: Serve a local checkpoint with tao-dataservices on port 8090
  tao.inference.tao_inference_service:
    name: my-llm
    network_arch: tao-dataservices
    model_path: /models/my-llm
    volumes:
      - /srv/checkpoints/my-llm:/models/my-llm:ro
    host_port: 8090
    secret_env: [HF_TOKEN]

- name: Start it with a token from an AWX credential or a vaulted variable (never logged)
  tao.inference.tao_inference_service:
    name: reason-awx
    network_arch: cosmos-rl
    model_path: hf_model://nvidia/Cosmos-Reason1-7B
    secrets:
      HF_TOKEN: "{{ hf_token }}"

- name: Stop it
  tao.inference.tao_inference_service:
    name: my-llm
    state: absent

- name: Run it as a Slurm job, reached through an SSH tunnel via the login host
  tao.inference.tao_inference_service:
    name: reason-slurm
    platform: slurm
    slurm_login_host: login.cluster.example
    slurm_user: alice
    partition: gpu
    time_limit: "04:00:00"
    network_arch: cosmos-rl
    model_path: hf_model://nvidia/Cosmos-Reason1-7B

- name: Stop the most recently started service
  tao.inference.tao_inference_service:
    job_id: latest
    state: absent
"""

RETURN = r"""
job_id:
  description: The job_id of the service (also the container name and the registry key).
  returned: state=present
  type: str
  sample: 6f1c1f5e-4f7e-4c39-9d59-0c3c8d8f9b1e
name:
  description: The O(name) given, or null.
  returned: state=present
  type: str
platform:
  description: The platform.
  returned: state=present
  type: str
  sample: local-docker
network_arch:
  description: The arch.
  returned: state=present
  type: str
  sample: cosmos-rl
model_path:
  description: The checkpoint.
  returned: state=present
  type: str
image:
  description: The image the container runs.
  returned: state=present
  type: str
  sample: nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl
host_url:
  description: Base URL of the service.
  returned: state=present
  type: str
  sample: http://localhost:8080
controller_url:
  description:
    - Base URL of the service from another machine when RV(host_url) is no loopback URL (it is then the same).
      Null when the service is reached on the host's loopback; M(tao.inference.tao_inference_fleet) on the
      controller then gives the URL of its forward.
  returned: state=present
  type: str
machine:
  description: The name of the machine that runs the module (its hostname); only that machine stops or prunes it.
  returned: state=present
  type: str
inventory_host:
  description: The O(inventory_host) given, or null.
  returned: state=present
  type: str
host_port:
  description: Host port bound to the container's port 8080.
  returned: state=present
  type: int
  sample: 8080
docker_url:
  description: URL of the service from other containers on the same Docker network.
  returned: state=present
  type: str
chat_url:
  description: The chat completions URL.
  returned: state=present
  type: str
  sample: http://localhost:8080/v1/chat/completions
started_at:
  description: ISO-8601 UTC start time.
  returned: state=present
  type: str
fingerprint:
  description: Hash of the spec (of RV(shape)); a different one makes O(name) recreate the service.
  returned: state=present
  type: str
shape:
  description:
    - Everything that shapes the running service (arch, model, image, env, volumes, shm_size, server options,
      the platform's own options...), as recorded in the registry. It holds no secret value, only names.
  returned: state=present
  type: dict
wait_timeout:
  description: The O(wait_timeout) in force (for a caller that waits on its own, as the inference_service role does).
  returned: state=present
  type: float
recreated_because:
  description:
    - The fields of RV(shape) that differ between the service this start replaced (same O(name)) and the new
      one, e.g. V(image), V(env), V(platform_options.partition); empty when nothing was replaced.
  returned: state=present and the service was started (not kept)
  type: list
  elements: str
  sample: [env, shm_size]
secret_env:
  description: Names (never values) of the secret variables handed to the container.
  returned: state=present
  type: list
  elements: str
platform_job_id:
  description: The platform's own id (the Slurm job id, the Kubernetes Job name), or null.
  returned: state=present
  type: str
lepton_deployment:
  description: O(platform=lepton) only. The deployment (endpoint) that runs the service.
  returned: state=present and O(platform=lepton)
  type: str
lepton_workspace:
  description: O(platform=lepton) only. The workspace it runs in; it is looked at and stopped only there.
  returned: state=present and O(platform=lepton)
  type: str
lepton_api:
  description: O(platform=lepton) only. The workspace API URL it was started through.
  returned: state=present and O(platform=lepton)
  type: str
endpoint_auth:
  description:
    - Where the endpoint's token comes from (C(source), an environment variable such as C(LEPTON_WORKSPACE_TOKEN))
      and C(binding), a one-way proof that binds that token to RV(host_url) (never the token). Requests send the
      token only where the binding holds.
  returned: state=present and the endpoint takes a token
  type: dict
slurm_node:
  description: O(platform=slurm) only. The node the job runs on.
  returned: state=present and O(platform=slurm)
  type: str
tunnel_pid:
  description: O(platform=slurm) only. The pid of the local C(ssh -N -L) tunnel process.
  returned: state=present and O(platform=slurm)
  type: int
k8s_service:
  description: O(platform=kubernetes) only. The Service in front of the Job's pod (named like the Job).
  returned: state=present and O(platform=kubernetes)
  type: str
k8s_pod:
  description: O(platform=kubernetes) only. The Job's pod.
  returned: state=present and O(platform=kubernetes)
  type: str
k8s_service_type:
  description: O(platform=kubernetes) only. The O(service_type) the service was started with.
  returned: state=present and O(platform=kubernetes)
  type: str
forward_pid:
  description: O(service_type=ClusterIP) only. The pid of the local port forward process.
  returned: state=present and O(service_type=ClusterIP)
  type: int
repaired:
  description:
    - What was mended on a matching running service (V(tunnel_down) when a dead Slurm tunnel was re-opened,
      V(forward_down) when a dead Kubernetes port forward was restarted).
  returned: state=present with O(name)
  type: list
  elements: str
pull:
  description:
    - What getting the image took, on the platforms that pull it here (local-docker). C(pulled) false when the
      engine had it (nothing was pulled, no time spent), else C(seconds) the pull took, C(bytes) (as the registry
      sent them) and C(layers) it had, and C(joined) true when a pull of it that another run had under way was
      waited for. M(tao.inference.tao_inference_pull) pulls ahead of the start with its progress shown.
  returned: state=present when a service was started on local-docker, not in check mode
  type: dict
  sample: {pulled: true, seconds: 742.3, bytes: 21474836480, layers: 31, joined: false}
readiness:
  description:
    - The last readiness observation (C(state), C(reason), C(message), C(http_status)) and
      C(history), each reason change with the seconds since the wait began.
  returned: when O(wait=true)
  type: dict
stopped:
  description: job_ids whose container (or job) was stopped and removed.
  returned: state=absent
  type: list
  elements: str
tidied:
  description: job_ids whose service was already gone; only their registry entries were dropped (not a change).
  returned: state=absent
  type: list
  elements: str
elsewhere:
  description:
    - Services the selection matched that run on another machine (a registry shared between hosts, such as
      an NFS home). They were neither stopped nor dropped; stop them from their own host.
  returned: state=absent
  type: list
  elements: dict
  sample: [{job_id: 6f1c1f5e-4f7e-4c39-9d59-0c3c8d8f9b1e, name: eval, machine: gpu2, inventory_host: gpu2}]
"""

import os

from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.common import REGISTRY_ARGS, WAIT_ARGS, new_module, open_registry, run
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.trust import check_job_id, check_text
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager
from ansible_collections.tao.inference.plugins.module_utils.spec import SERVICE_OPTIONS, build_spec, check_secrets


def main():
    platform_spec = platforms.argument_spec()
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        job_id=dict(type="str"),
        inventory_host=dict(type="str"),
        secrets=dict(type="dict", no_log=True),
        **SERVICE_OPTIONS
    )
    argument_spec.update(REGISTRY_ARGS)
    argument_spec.update(WAIT_ARGS)
    argument_spec.update(platform_spec)
    module = new_module(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[
            ("state", "present", ("network_arch", "model_path")),
            ("state", "absent", ("name", "job_id"), True),
        ],
        mutually_exclusive=[("name", "job_id")],
    )
    params = module.params
    options = dict((option, params[option]) for option in platform_spec)
    manager = ServiceManager(open_registry(module), os.environ, options, inventory_host=params["inventory_host"])

    def action():
        manager.secrets = check_secrets(params["secrets"])
        if params["job_id"]:
            check_job_id(params["job_id"], allow_latest=True)
        if params["inventory_host"] is not None and not (
                0 < len(params["inventory_host"]) <= 255 and check_text(params["inventory_host"], "inventory_host")):
            raise TaoInferenceError("inventory_host must be an inventory host name of 1 to 255 characters")
        if params["state"] == "absent":
            return manager.absent(job_id=params["job_id"], name=params["name"], platform=params["platform"])
        if params["job_id"]:
            raise TaoInferenceError("job_id selects a service to stop with state=absent; to keep a service "
                                    "under a stable identity with state=present, use name")
        spec = build_spec(params, os.environ)
        result = manager.present(spec, params["wait"], params["wait_timeout"], params["wait_sleep"])
        result.update(result.pop("service"), wait_timeout=params["wait_timeout"])
        return result

    run(module, action, manager.close)


if __name__ == "__main__":
    main()
