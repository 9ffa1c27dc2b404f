# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # platform: lepton. Options of the driver plugins/module_utils/platforms/lepton.py.
    DOCUMENTATION = r"""
options:
  lepton_workspace_id:
    description:
      - With C(platform=lepton) only, like every option of this group. The DGX Cloud Lepton workspace id.
        Default is the C(LEPTON_WORKSPACE_ID) environment variable of the host that runs the module.
      - The environment variables are read by the platform itself, so exporting them does not make the
        modules refuse a start on another platform.
      - A service is looked at and stopped only in the workspace (and through the API URL) it was started in;
        a run that reaches another one refuses, and the registry never chooses the workspace.
    type: str
  lepton_workspace_token:
    description:
      - The workspace token the REST API takes (C(Authorization Bearer)). Default is C(LEPTON_WORKSPACE_TOKEN).
      - It needs to create, read and delete deployments and user secrets, and to read the workspace, its
        resource shapes, dedicated node groups and image pull secrets.
      - It is sent only to the workspace's API URL (never over plain http to another machine, never after a
        redirect) and, with O(lepton_endpoint_auth=workspace_token), to the service's own endpoint URL as the
        Lepton API returned it. It never appears in the registry, results, diffs or logs.
    type: str
  lepton_workspace_url:
    description:
      - The workspace's API URL. Default is C(LEPTON_WORKSPACE_URL), else
        C(https://gateway.dgxc-lepton.nvidia.com/api/v2/workspaces/<lepton_workspace_id>).
      - Plain C(http://) is accepted for loopback addresses only.
    type: str
  lepton_validate_certs:
    description:
      - Verify the API's TLS certificate (C(SSL_CERT_FILE) names another CA bundle).
    type: bool
    default: true
  lepton_api_timeout:
    description:
      - Seconds one Lepton API call may take.
    type: float
    default: 30
  resource_shape:
    description:
      - The Lepton resource shape each replica runs on, for example C(gpu.1xh100-sxm), C(gpu.8xh100-sxm) or
        C(cpu.small). Required to start a service; the start and the preflight list the shapes the workspace
        (or O(dedicated_node_group)) offers when it is missing or unknown.
      - The shape fixes the GPUs of a replica, and C(num_gpus) must say the same number (V(0) for a CPU shape).
    type: str
  dedicated_node_group:
    description:
      - The dedicated node group the replicas run in, by name (or id); the module looks its id up. GPU shapes are
        usually offered in node groups only.
    type: str
  lepton_replicas:
    description:
      - How many replicas the endpoint runs (a fixed number; requests are spread over them).
    type: int
    default: 1
  lepton_image_pull_secret:
    description:
      - The name of a registry credential of the workspace that pulls the image (C(image_pull_secrets)), for
        example one for C(nvcr.io) with user C($oauthtoken) and an NGC API key. The preflight checks it exists.
    type: str
  lepton_endpoint_auth:
    description:
      - Who may call the endpoint. V(workspace_token) (the default) makes the endpoint take the workspace token
        (Lepton's C(WORKSPACE_TOKEN) reference); V(endpoint_token) a token of its own, O(lepton_endpoint_token);
        V(none) anyone who reaches it (C(allow_unauthenticated_access)).
      - With a token, Lepton's gateway checks it and removes the C(Authorization) header before a request
        reaches the container. M(tao.inference.tao_inference_request), the readiness waits and
        M(tao.inference.tao_inference_info) send the token from their own run (C(LEPTON_WORKSPACE_TOKEN) or
        C(LEPTON_ENDPOINT_TOKEN)); the registry records only which one, and a binding of it to the endpoint's
        URL, so a registry entry cannot make a run send the token to another address.
    type: str
    choices: [workspace_token, endpoint_token, none]
    default: workspace_token
  lepton_endpoint_token:
    description:
      - The endpoint's own token, with O(lepton_endpoint_auth=endpoint_token). Default is C(LEPTON_ENDPOINT_TOKEN).
      - Lepton keeps it in the deployment's C(api_tokens) (its API shows it redacted). A new token does not
        replace the one of a running service; stop and start the service to change it.
    type: str
  lepton_ip_allowlist:
    description:
      - Addresses or CIDR blocks that may call the endpoint (C(auth_config.ip_allowlist)); default any.
    type: list
    elements: str
  lepton_mounts:
    description:
      - Lepton storage mounted into the container, each C(FROM_PATH:MOUNT_PATH:VOLUME) as C(lep endpoint create
        --mount) takes it, for example C(/shared/models:/models:node-nfs:lepton-shared-fs) or
        C(/data:/data:node-local); both paths absolute, without C(..). C(volumes) (host folders) do not exist on
        Lepton and are refused.
    type: list
    elements: str
  lepton_initial_delay_seconds:
    description:
      - Seconds Lepton lets the container start before its health check (a TCP check of port 8080) may restart
        it. The model's own loading is waited for through the readiness route, within C(wait_timeout).
    type: int
    default: 600
"""
