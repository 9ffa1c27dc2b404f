"""The Kubernetes driver's objects, pinned: the Job, the Service and the Secret a service becomes."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import LABEL_PREFIX, Launch
from ansible_collections.tao.inference.plugins.module_utils.platforms.kubernetes import KubernetesDriver

from .helpers import JOB_ID, make_spec

CANARY = "canary-9f3b1c7e-secret-value"
NAME = "tao-" + JOB_ID
LABELS = {"app.kubernetes.io/managed-by": "tao.inference", "tao.inference/job-id": JOB_ID,
          "tao.inference/network-arch": "cosmos-rl", "tao.inference/name": "svc"}
ANNOTATIONS = {"tao.inference/registry": "/home/u/.local/state/tao-inference/registry.json",
               "tao.inference/fingerprint": "ab" * 32, "tao.inference/name": "svc"}


def k8s_spec(**params):
    base = dict(platform="kubernetes", name="svc", num_gpus=2, shm_size="16g",
                volumes=["/data/models:/models:ro"], env={"LOG_LEVEL": "debug"}, secret_env=["HF_TOKEN"])
    base.update(params)
    return make_spec(environ={"HF_TOKEN": CANARY}, **base)


def launch_of(spec, secrets=None):
    labels = {LABEL_PREFIX + "registry": ANNOTATIONS["tao.inference/registry"],
              LABEL_PREFIX + "fingerprint": ANNOTATIONS["tao.inference/fingerprint"]}
    return Launch(spec, JOB_ID, "python -m server --port 8080", {"TAO_API_JOB_ID": JOB_ID},
                  {"HF_TOKEN": CANARY} if secrets is None else secrets, None, labels)


def test_the_job_is_pinned():
    spec = k8s_spec(node_selector={"nvidia.com/gpu.product": "A100"}, image_pull_secret="ngc-secret",
                    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    volume_claims=["checkpoints:/ckpt:ro"])
    job = KubernetesDriver(namespace="tao").job_object(launch_of(spec))
    assert job == {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": NAME, "namespace": "tao", "labels": LABELS, "annotations": ANNOTATIONS},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": LABELS, "annotations": ANNOTATIONS},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [{
                    "name": "server", "image": spec.image,
                    "command": ["/bin/bash", "-c", "python -m server --port 8080"],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "TAO_API_JOB_ID", "value": JOB_ID},
                            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": NAME + "-env",
                                                                                "key": "HF_TOKEN"}}}],
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                                     {"name": "host-0", "mountPath": "/models", "readOnly": True},
                                     {"name": "claim-0", "mountPath": "/ckpt", "readOnly": True}],
                    "readinessProbe": {"httpGet": {"path": "/api/v1/health/readiness", "port": 8080}, "periodSeconds": 5,
                                       "failureThreshold": 3, "timeoutSeconds": 5},
                    "resources": {"limits": {"nvidia.com/gpu": "2"}},
                }],
                "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                            {"name": "host-0", "hostPath": {"path": "/data/models"}},
                            {"name": "claim-0", "persistentVolumeClaim": {"claimName": "checkpoints",
                                                                          "readOnly": True}}],
                "nodeSelector": {"nvidia.com/gpu.product": "A100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "imagePullSecrets": [{"name": "ngc-secret"}],
            }}},
    }
    assert CANARY not in repr(job)


def test_no_gpu_means_no_gpu_limit_and_no_secret_object():
    spec = k8s_spec(num_gpus=0, secret_env=[])
    launch = launch_of(spec, secrets={})
    driver = KubernetesDriver()
    job = driver.job_object(launch)
    assert "resources" not in job["spec"]["template"]["spec"]["containers"][0]
    assert driver.secret_object(launch) is None


def test_the_secret_holds_the_values_and_nothing_else_does():
    driver = KubernetesDriver(namespace="tao")
    secret = driver.secret_object(launch_of(k8s_spec()))
    assert secret == {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                      "metadata": {"name": NAME + "-env", "namespace": "tao", "labels": LABELS,
                                   "annotations": ANNOTATIONS},
                      "data": {"HF_TOKEN": "Y2FuYXJ5LTlmM2IxYzdlLXNlY3JldC12YWx1ZQ=="}}


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort", "ClusterIP"])
def test_the_service_selects_the_jobs_pod(service_type):
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": NAME, "uid": "u-1", "controller": False,
             "blockOwnerDeletion": False}
    service = KubernetesDriver(namespace="tao").service_object(launch_of(k8s_spec(service_type=service_type)), owner)
    assert service == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": "tao", "labels": LABELS, "annotations": ANNOTATIONS,
                     "ownerReferences": [owner]},
        "spec": {"type": service_type,
                 "selector": {"app.kubernetes.io/managed-by": "tao.inference", "tao.inference/job-id": JOB_ID},
                 "publishNotReadyAddresses": True,
                 "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080}]},
    }


@pytest.mark.parametrize("params, message", [
    ({"service_type": "Ingress"}, "service_type"),
    ({"node_selector": {"-bad": "x"}}, "node_selector"),
    ({"node_selector": {"gpu": "a b"}}, "node_selector"),
    ({"tolerations": [{"key": "k", "operator": "Sometimes"}]}, "operator is Equal or Exists"),
    ({"tolerations": [{"key": "k", "color": "red"}]}, "tolerations entry"),
    ({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, "takes no value"),
    ({"tolerations": [{"key": "k", "toleration_seconds": 5}]}, "effect NoExecute"),
    ({"image_pull_secret": "Bad_Name"}, "image_pull_secret"),
    ({"image_pull_secret": "ngc\n"}, "image_pull_secret"),
    ({"volume_claims": ["claim"]}, "volume_claims"),
    ({"volume_claims": ["claim:relative"]}, "volume_claims"),
    ({"volume_claims": ["Claim:/x"]}, "volume_claims"),
    ({"volume_claims": ["claim:/x:rx"]}, "volume_claims"),
    ({"source_ranges": ["10.0.0.0/33"]}, "source_ranges"),
    ({"source_ranges": ["10.0.0.0/8\n"]}, "source_ranges"),
    ({"source_ranges": ["10.0.0.0/8"], "service_type": "NodePort"}, "limits who reaches a LoadBalancer"),
    ({"host_port": 18080}, "host_port is the local port of a ClusterIP"),
])
def test_bad_kubernetes_options_are_refused(params, message):
    with pytest.raises(TaoInferenceError) as err:
        k8s_spec(**params)
    assert message in err.value.msg


@pytest.mark.parametrize("connection, message", [
    ({"namespace": "Tao"}, "namespace"),
    ({"namespace": "-n"}, "namespace"),
    ({"namespace": "a" * 64}, "namespace"),
    ({"namespace": "tao", "context": "ctx\nx"}, "context"),
    ({"namespace": "tao", "kubeconfig": 5}, "kubeconfig"),
])
def test_bad_connections_are_refused(connection, message):
    with pytest.raises(TaoInferenceError) as err:
        KubernetesDriver.from_options(connection, {})
    assert message in err.value.msg


def test_another_platforms_option_is_refused_by_name():
    with pytest.raises(TaoInferenceError) as err:
        k8s_spec(partition="gpu")
    assert "partition is an option of platform slurm, not of kubernetes" in err.value.msg


def test_a_kubeconfig_given_as_data_is_never_recorded(monkeypatch):
    driver = KubernetesDriver(kubeconfig={"users": [{"user": {"token": CANARY}}]}, namespace="tao")
    monkeypatch.setattr(driver, "_ensure_api", lambda: None)
    driver._server, driver._context = "https://10.0.0.1:6443", "prod"
    recorded = driver.recorded_connection({"kubeconfig": driver.kubeconfig, "context": None, "namespace": "tao"})
    assert recorded == {"kubeconfig": None, "context": "prod", "namespace": "tao", "server": "https://10.0.0.1:6443"}


def test_the_forward_is_only_for_cluster_ip():
    assert KubernetesDriver(service_type="ClusterIP").uses_host_port
    assert not KubernetesDriver(service_type="LoadBalancer").uses_host_port


def _pod(phase="Pending", conditions=None, containers=None):
    return {"metadata": {"name": "p"}, "status": {"phase": phase, "conditions": conditions or [],
                                                  "containerStatuses": containers or []}}


@pytest.mark.parametrize("pod, expected", [
    (_pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]),
     "cannot be scheduled: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
    (_pod(containers=[{"name": "server", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                               "message": "Back-off pulling image x"}}}]),
     "container server is ImagePullBackOff: Back-off pulling image x"),
    (_pod("Failed", containers=[{"name": "server", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]),
     "container server ended (exit code 3, Error)"),
])
def test_pods_that_will_not_run_are_named_with_their_reason(pod, expected):
    assert expected in KubernetesDriver()._pod_problem(pod, {})


def test_a_pod_still_on_its_way_is_no_problem():
    waiting = [{"name": "server", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    assert KubernetesDriver()._pod_problem(_pod(containers=waiting), {}) is None


def test_problems_are_masked():
    pod = _pod(containers=[{"name": "server", "state": {"terminated": {"exitCode": 1, "message": "token " + CANARY}}}])
    assert CANARY not in KubernetesDriver()._pod_problem(pod, {"HF_TOKEN": CANARY})


def test_a_load_balancer_can_be_limited_to_source_ranges():
    spec = k8s_spec(source_ranges=["203.0.113.7/24"])
    service = KubernetesDriver(namespace="tao").service_object(launch_of(spec))
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert "loadBalancerSourceRanges" not in KubernetesDriver().service_object(launch_of(k8s_spec()))["spec"]


def test_a_forward_is_known_by_its_exact_command_line_not_by_the_registry(monkeypatch):
    """An entry's forward is looked for with a command line made from its validated fields: a planted
    entry naming another process of this user (whatever its forward_spec says) never matches it."""
    import subprocess
    import sys

    from ansible_collections.tao.inference.plugins.module_utils import kube_forward, procs

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "300"])
    try:
        _state, started = procs.stat_of(sleeper.pid)
        entry = {"job_id": JOB_ID, "k8s_service_type": "ClusterIP", "forward_pid": sleeper.pid,
                 "forward_start_time": started, "forward_spec": "300", "k8s_pod": NAME + "-abcde", "host_port": 18080}
        driver = KubernetesDriver(namespace="tao")
        monkeypatch.setattr(kube_forward, "find", lambda namespace, prefix: [])
        assert not driver._forward_alive(entry)
        assert driver.release(entry) is False
        assert sleeper.poll() is None
        assert not kube_forward.alive(sleeper.pid, started, "")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_kubeconfig_path_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    driver = KubernetesDriver.from_options({"kubeconfig": "~/kube.yml", "namespace": "tao"}, {})
    assert driver.kubeconfig == str(tmp_path / "kube.yml")


def test_a_service_is_never_looked_for_on_another_cluster(monkeypatch):
    """The registry records the API server; a run whose kubeconfig and context reach another one refuses to
    read or stop the service there (it would find nothing, and tidy away an entry whose Job still runs)."""
    driver = KubernetesDriver.from_options({"namespace": "tao", "server": "https://10.0.0.1:6443"}, {})

    def connect():
        driver._server, driver._context, driver._where = "https://10.9.9.9:6443", "other", "kubeconfig /k"
        return object()

    monkeypatch.setattr(driver, "_connect", connect)
    with pytest.raises(TaoInferenceError) as err:
        driver.status({"job_id": JOB_ID})
    assert "runs on the cluster at https://10.0.0.1:6443" in err.value.msg and "10.9.9.9" in err.value.msg
