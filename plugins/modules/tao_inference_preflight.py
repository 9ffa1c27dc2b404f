#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: tao_inference_preflight
short_description: Check that a platform can run a TAO inference service
version_added: 0.1.0
description:
  - Runs the platform checks of M(tao.inference.tao_inference_service) without starting anything
    - for local-docker, the Docker engine answers, the NVIDIA runtime is there when O(num_gpus) is
    1 or more; for slurm, SSH to the login host works in batch mode, C(sinfo) answers and the
    partition exists - and that the service registry is readable; reports the resolved image
    and, for local-docker, whether the Docker host already has it.
  - For lepton, the workspace answers to the token and is not paused, the dedicated node group and the
    resource shape exist, the shape gives O(num_gpus) GPUs, the quota has room for the replicas and the
    image pull secret is there; it reports the node group's free GPUs.
  - Fails with a message that says what to install or change.
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
    description: Changes nothing in any mode.
    support: full
  diff_mode:
    description: Nothing to show.
    support: none
  idempotent:
    description: Read-only.
    support: full
options:
  platform:
    description:
      - The platform to check.
    type: str
    choices: [local-docker, slurm, kubernetes, brev, lepton]
    default: local-docker
  network_arch:
    description:
      - The arch whose image is resolved (see M(tao.inference.tao_inference_service)).
    type: str
    required: true
    choices: [cosmos-predict2.5, cosmos-rl, tao-dataservices]
  image:
    description:
      - Image override (absolute URI or C(versions.yaml) key).
    type: str
  num_gpus:
    description:
      - GPUs the service will need; 1 or more requires the NVIDIA container runtime.
    type: int
    default: 1
requirements:
  - Python 3.8 or newer on the host that runs the module (the managed host; C(localhost) in the demo). It
    checks there what the platform it is given needs, the same as M(tao.inference.tao_inference_service).
  - For local-docker, a Docker engine (API 1.40 or newer, Docker 19.03+) that host can reach, with read and write
    access to its socket (root, or a member of the C(docker) group), or O(docker_host) over C(tcp://) or
    C(ssh://). The module speaks the Engine API itself; no Python Docker library is needed.
  - An C(ssh) client on that host for C(ssh://) engines, platform C(slurm) (the login host and the tunnel)
    and platform C(brev) (the instance's engine and the tunnel).
  - For platform C(brev), the C(brev) CLI on that host, logged in.
  - For platform C(kubernetes), the Python package C(kubernetes) (28 or newer) on that host.
  - For platform C(lepton), the Python package C(httpx) on that host.
seealso:
  - module: tao.inference.tao_inference_service
"""

EXAMPLES = r"""
- name: Check the local Docker engine can run a CPU-only reference image
  tao.inference.tao_inference_preflight:
    network_arch: cosmos-rl
    image: tao-inference-emulator:latest
    num_gpus: 0
  register: preflight
"""

RETURN = r"""
image:
  description: The resolved image.
  returned: success
  type: str
image_source:
  description: Where the image came from (option, C(IMAGE_<KEY>), or the mapping).
  returned: success
  type: str
image_present:
  description: Whether the Docker host already has the image (else it is pulled at start).
  returned: platform=local-docker
  type: bool
partitions:
  description: Slurm partitions and their availability (V(up), V(down)...).
  returned: platform=slurm
  type: dict
partition_state:
  description: Availability of the chosen partition (O(partition) or C(SLURM_PARTITION)); null when none was chosen.
  returned: platform=slurm
  type: str
runtime:
  description: The container runtime the job will use (O(slurm_container_runtime)).
  returned: platform=slurm
  type: str
login_host:
  description: The login host as ssh reaches it (C([user@]host)).
  returned: platform=slurm
  type: str
engine:
  description: Engine name and version, e.g. C(Docker 27.3.1 (API 1.47)).
  returned: platform=local-docker
  type: str
host:
  description: Where the service's port will be reached from here (C(localhost) for this machine's engine).
  returned: platform=local-docker
  type: str
services_in_registry:
  description: How many services the registry holds.
  returned: success
  type: int
namespace:
  description: The namespace the service would run in (it exists, or the check failed).
  returned: platform=kubernetes
  type: str
image_pull_secret:
  description: The pull secret found in the namespace (O(image_pull_secret)).
  returned: platform=kubernetes and O(image_pull_secret) is given
  type: str
server:
  description: The Kubernetes API server the kubeconfig (or the in-cluster account) names.
  returned: platform=kubernetes
  type: str
nodes:
  description: How many nodes the cluster has.
  returned: platform=kubernetes and the credentials may list nodes
  type: int
allocatable_gpus:
  description: C(nvidia.com/gpu) each node can give pods, by node name; null when nodes may not be listed.
    A warning says when no node offers any.
  returned: platform=kubernetes
  type: dict
runtimes:
  description: Container runtimes the engine offers.
  returned: platform=local-docker
  type: list
  elements: str
workspace_id:
  description: The Lepton workspace checked (O(lepton_workspace_id) or C(LEPTON_WORKSPACE_ID)).
  returned: platform=lepton
  type: str
workspace_url:
  description: The workspace's API URL the token was sent to.
  returned: platform=lepton
  type: str
workspace_name:
  description: The workspace's name, as its API reports it.
  returned: platform=lepton
  type: str
workspace_state:
  description: The workspace's state (C(normal); a paused workspace fails the check).
  returned: platform=lepton
  type: str
quota:
  description: The workspace's resource quota, C(limit) and C(used) (C(cpu), C(memory) in MiB, C(accelerator_num)).
    The check fails when the service's replicas would not fit.
  returned: platform=lepton
  type: dict
resource_shapes:
  description: The resource shapes the workspace (or O(dedicated_node_group)) offers.
  returned: platform=lepton
  type: list
  elements: str
dedicated_node_group:
  description: The node group found (C(name), C(id)), its C(nodes) and the C(free_gpus) of each node.
  returned: platform=lepton and O(dedicated_node_group) is given
  type: dict
lepton_image_pull_secret:
  description: The registry credential found in the workspace (O(lepton_image_pull_secret)).
  returned: platform=lepton and O(lepton_image_pull_secret) is given
  type: str
"""

import os

from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.common import REGISTRY_ARGS, new_module, open_registry, run
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager
from ansible_collections.tao.inference.plugins.module_utils.spec import SERVICE_OPTIONS, build_spec


def main():
    platform_spec = platforms.argument_spec()
    argument_spec = dict(
        platform=SERVICE_OPTIONS["platform"],
        network_arch=dict(SERVICE_OPTIONS["network_arch"], required=True),
        image=SERVICE_OPTIONS["image"],
        num_gpus=SERVICE_OPTIONS["num_gpus"],
    )
    argument_spec.update(REGISTRY_ARGS)
    argument_spec.update(platform_spec)
    module = new_module(argument_spec=argument_spec, supports_check_mode=True)
    params = dict(module.params, model_path="hf_model://preflight/check", secret_env=[])
    manager = ServiceManager(open_registry(module, read_only=True), os.environ,
                             dict((option, params[option]) for option in platform_spec))

    def action():
        spec = build_spec(params, os.environ)
        facts = manager.driver(spec.platform).preflight(spec)
        services = manager.registry.read().entries()
        facts.update(changed=False, image=spec.image, image_source=spec.image_source,
                     services_in_registry=len(services))
        return facts

    run(module, action, manager.close)


if __name__ == "__main__":
    main()
