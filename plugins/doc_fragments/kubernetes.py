# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # platform: kubernetes. Options of the driver plugins/module_utils/platforms/kubernetes.py.
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - With C(platform=kubernetes) only, like every option of this group. The kubeconfig to use, as a
        file path or as the kubeconfig itself (a dict). Default is C(K8S_AUTH_KUBECONFIG), else
        C(KUBECONFIG) or C(~/.kube/config), else the in-cluster service account when the module runs in a pod.
      - The value is treated as a secret (it may hold a token), so Ansible masks it in its output; a
        kubeconfig given as a dict is never recorded in the registry. A service started with a kubeconfig
        file is stopped and read with the same file; the registry never chooses one by itself.
    type: raw
  context:
    description:
      - The kubeconfig context. Default is C(K8S_AUTH_CONTEXT), else the kubeconfig's current context.
    type: str
  namespace:
    description:
      - The namespace of the Job, Service and Secret the collection creates for a service. It must exist
        (the preflight says so when it does not).
    type: str
    default: default
  validate_certs:
    description:
      - Verify the API server's certificate. Default is what the kubeconfig says (verified unless it sets
        C(insecure-skip-tls-verify)).
    type: bool
  api_timeout:
    description:
      - Seconds one Kubernetes API call may take.
    type: float
    default: 30
  service_type:
    description:
      - How the service is reached. V(LoadBalancer) waits, within C(wait_timeout), for the load balancer's
        address and serves on it (port 8080). V(NodePort) serves on the address of the pod's node and the
        node port Kubernetes chose. V(ClusterIP), for clusters without a load balancer whose nodes cannot
        be reached, starts a port forward on this machine (C(http://127.0.0.1:<host_port>) through the
        Kubernetes API), a process of its own that the collection tracks by pid and stops with the service.
        When it died (or exited because the cluster refused its credentials), C(tao_inference_info) reports
        it and the next start with the same C(name) starts it again. Every local user can connect to it.
        It runs with an environment without secrets (no variable whose name looks like a credential), so a
        kubeconfig C(exec) plugin that needs one (C(AWS_SECRET_ACCESS_KEY)...) cannot renew its token there;
        use a token or certificate kubeconfig, or a plugin that reads its own files, with V(ClusterIP).
      - The service has no authentication of its own; anyone who reaches a LoadBalancer or NodePort
        address can use it.
    type: str
    choices: [LoadBalancer, NodePort, ClusterIP]
    default: LoadBalancer
  node_selector:
    description:
      - Node labels the pod must run on, for example C(nvidia.com/gpu.product) set to C(NVIDIA-A100-SXM4-80GB).
    type: dict
  tolerations:
    description:
      - Taints the pod tolerates (GPU nodes are often tainted). Each item has C(key), C(operator)
        (C(Equal) or C(Exists)), C(value), C(effect) (C(NoSchedule), C(PreferNoSchedule), C(NoExecute))
        and C(toleration_seconds).
    type: list
    elements: dict
  image_pull_secret:
    description:
      - The docker-registry Secret in O(namespace) that pulls the image (C(imagePullSecrets)). Required
        for nvcr.io images, and checked before anything is created, e.g. made with
        C(kubectl create secret docker-registry ngc-secret --docker-server=nvcr.io
        --docker-username='$oauthtoken' --docker-password=<NGC API key>).
    type: str
  source_ranges:
    description:
      - With O(service_type=LoadBalancer), the client address ranges the load balancer lets in
        (C(loadBalancerSourceRanges)), e.g. V(203.0.113.0/24). Without it, a cloud load balancer is often
        reachable from the internet, and the service has no authentication of its own.
    type: list
    elements: str
  volume_claims:
    description:
      - PersistentVolumeClaims mounted into the container, each V(<claim>:/container/path[:ro|rw]).
        C(volumes) (C(/host/path:/container/path)) become hostPath mounts on Kubernetes.
    type: list
    elements: str
"""
