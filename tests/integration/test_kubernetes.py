"""platform: kubernetes through ansible-playbook, against the stand-in API server.

`make test` starts the stand-in (scripts/ensure-kubernetes.sh): it validates every object against the
official schemas, runs each Job's pod on the local Docker engine with the real image, and gives each
LoadBalancer Service its own 127.0.0.x address. Each test works in a namespace of its own, which it
deletes at the end; nothing may be left in it, or on the engine, after a stop.
"""

import base64
import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from ansible_collections.tao.inference.plugins.module_utils import procs

from .conftest import IMAGE, ROOT, docker

KUBECONFIG = os.path.join(ROOT, ".build", "kubernetes", "kubeconfig")
CANARY = "canary-k8s-" + uuid.uuid4().hex
MANAGED = "app.kubernetes.io/managed-by=tao.inference"


def wait_for(predicate, seconds, step=0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Cluster(object):
    """The bare client, to look at what the modules made."""

    def __init__(self, namespace):
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=KUBECONFIG, context="tao-test", client_configuration=configuration)
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.namespace = namespace

    def raw(self, function, *args, **kwargs):
        return json.loads(function(*args, _preload_content=False, **kwargs).data)

    def items(self, kind, selector=MANAGED):
        lister = {"jobs": self.batch.list_namespaced_job, "pods": self.core.list_namespaced_pod,
                  "services": self.core.list_namespaced_service, "secrets": self.core.list_namespaced_secret,
                  "events": self.core.list_namespaced_event}[kind]
        if kind == "events":
            return self.raw(lister, self.namespace)["items"]
        return self.raw(lister, self.namespace, label_selector=selector)["items"]

    def ours(self):
        return dict((kind, [i["metadata"]["name"] for i in self.items(kind)])
                    for kind in ("jobs", "pods", "services", "secrets") if self.items(kind))

    def containers(self):
        """Containers the stand-in runs for pods of this namespace (running or not)."""
        out = docker("ps", "-aq", "--filter", "label=tao.k8s-standin.namespace=%s" % self.namespace).stdout
        return out.split()


@pytest.fixture
def k8s(harness):
    if not os.path.exists(KUBECONFIG):
        pytest.fail("no test cluster: run scripts/ensure-kubernetes.sh (make test does)")
    namespace = "tao-t-%s" % uuid.uuid4().hex[:8]
    cluster = Cluster(namespace)
    cluster.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    harness.cluster = cluster
    harness.connection = "    platform: kubernetes\n    kubeconfig: %s\n    context: tao-test\n    namespace: %s\n" % (
        KUBECONFIG, namespace)
    yield harness
    for entry in harness.entries().values():
        if entry.get("forward_pid") and procs.alive(entry["forward_pid"], entry.get("forward_start_time")):
            os.kill(int(entry["forward_pid"]), signal.SIGKILL)
    try:
        cluster.core.delete_namespace(namespace)
    finally:
        wait_for(lambda: not cluster.containers(), 30)
        left = cluster.containers()
        if left:
            docker("rm", "-f", *left, check=False)


def start_task(harness, title="Start", extra="", image=IMAGE, num_gpus=0):
    return ("- name: {title}\n  tao.inference.tao_inference_service:\n    network_arch: cosmos-rl\n"
            "    model_path: hf_model://nvidia/Cosmos-Reason1-7B\n    image: {image}\n    num_gpus: {gpus}\n"
            "    wait_timeout: 120\n{conn}{extra}  register: svc\n").format(
        title=title, image=image, gpus=num_gpus, conn=harness.connection,
        extra="".join("    %s\n" % line for line in extra.splitlines() if line))


def stop_task(harness, name):
    return "- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    state: absent\n%s" % (
        name, harness.connection)


ASK = """\
- name: Ask
  tao.inference.tao_inference_request:
    job_id: "{{ svc.job_id }}"
    prompt: What is in the picture?
    media: %s
    sampling: {}
  register: answer
""" % os.path.join(ROOT, "playbooks", "files", "demo.png")


def assert_gone(harness):
    assert wait_for(lambda: not harness.cluster.ours(), 30), harness.cluster.ours()
    assert wait_for(lambda: not harness.cluster.containers(), 30), harness.cluster.containers()
    assert harness.entries() == {}


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort", "ClusterIP"])
def test_start_ready_request_stop(k8s, service_type):
    name = "k8s-%s" % service_type.lower()
    run = k8s.play(start_task(k8s, extra="name: %s\nservice_type: %s" % (name, service_type)) + ASK)
    assert run.rc == 0, run.output[-3000:]
    service = run.task("Start")["result"]
    url = service["host_url"]
    if service_type == "LoadBalancer":
        assert url.startswith("http://127.0.0.") and url.endswith(":8080") and not url.startswith("http://127.0.0.1:")
    elif service_type == "NodePort":
        assert url.startswith("http://127.0.0.1:") and 30000 <= int(url.rsplit(":", 1)[1]) <= 32767
    else:
        assert url == "http://127.0.0.1:%d" % service["host_port"]
        assert procs.alive(service["forward_pid"], service["forward_start_time"])
    assert service["platform_job_id"] == "tao-" + service["job_id"] and service["k8s_service_type"] == service_type
    assert run.task("Start")["result"]["readiness"]["state"] == "ready"
    assert run.task("Ask")["result"]["content"], run.task("Ask")["result"]
    ours = k8s.cluster.ours()
    assert ours["jobs"] == ["tao-" + service["job_id"]] and ours["services"] == ["tao-" + service["job_id"]]
    job = k8s.cluster.items("jobs")[0]
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    again = k8s.play(start_task(k8s, extra="name: %s\nservice_type: %s" % (name, service_type)))
    assert again.task("Start")["status"] == "ok" and again.task("Start")["result"]["job_id"] == service["job_id"]

    stop = k8s.play(stop_task(k8s, name))
    assert stop.task("Stop")["status"] == "changed", stop.output[-2000:]
    assert_gone(k8s)
    if service_type == "ClusterIP":
        assert not procs.alive(service["forward_pid"], service["forward_start_time"])
    assert k8s.play(stop_task(k8s, name)).task("Stop")["status"] == "ok"


def test_a_dead_forward_is_repaired_by_the_next_start(k8s):
    run = k8s.play(start_task(k8s, extra="name: fwd\nservice_type: ClusterIP"))
    service = run.task("Start")["result"]
    os.kill(service["forward_pid"], signal.SIGKILL)
    assert wait_for(lambda: not procs.alive(service["forward_pid"], service["forward_start_time"]), 10)
    info = k8s.play("- name: Info\n  tao.inference.tao_inference_info:\n%s" % k8s.connection.replace(
        "    platform: kubernetes\n", ""))
    listed = info.task("Info")["result"]["services"][0]
    assert listed["platform_status"]["broken"] == "forward_down", listed
    again = k8s.play(start_task(k8s, extra="name: fwd\nservice_type: ClusterIP") + ASK)
    result = again.task("Start")["result"]
    assert again.task("Start")["status"] == "changed" and result["repaired"] == ["forward_down"]
    assert result["job_id"] == service["job_id"] and result["forward_pid"] != service["forward_pid"]
    assert again.task("Ask")["result"]["content"]
    k8s.play(stop_task(k8s, "fwd"))
    assert_gone(k8s)


def test_an_image_that_cannot_be_pulled_fails_fast_with_the_reason(k8s):
    began = time.monotonic()
    run = k8s.play(start_task(k8s, extra="name: nopull", image="tao-inference-missing:never"))
    took = time.monotonic() - began
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and ("ErrImagePull" in msg or "ImagePullBackOff" in msg), msg
    assert "tao-inference-missing:never" in msg and "stopped and removed" in msg
    assert took < 60, took
    assert_gone(k8s)


def test_more_gpus_than_the_node_has_fail_fast_as_unschedulable(k8s):
    run = k8s.play(start_task(k8s, extra="name: toomany", num_gpus=64))
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and "cannot be scheduled" in msg and "Insufficient nvidia.com/gpu" in msg, msg
    assert_gone(k8s)


def test_a_model_that_fails_to_load_ends_the_wait_with_the_reason(k8s):
    extra = 'name: badload\nenv:\n  TAO_EMULATOR_LOAD_FAIL: "CUDA out of memory in shard 3"'
    run = k8s.play(start_task(k8s, extra=extra))
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and "model_load_failed" in msg and "CUDA out of memory in shard 3" in msg, msg
    assert_gone(k8s)


def test_the_secret_reaches_the_container_only_through_a_secret_object(k8s):
    tasks = start_task(k8s, extra="name: secret\nsecret_env: [HF_TOKEN]") + """\
- name: Status route
  ansible.builtin.uri:
    url: "{{ svc.host_url }}/api/v1/status"
  register: status
"""
    run = k8s.play(tasks, args=["-vvvv", "--diff"], env={"HF_TOKEN": CANARY})
    assert run.rc == 0, run.output[-3000:]
    assert run.task("Status route")["result"]["json"]["hf_token_set"] is True
    assert CANARY not in run.output and CANARY not in json.dumps(run.records)
    assert CANARY not in json.dumps(k8s.registry_data())
    job, pod = k8s.cluster.items("jobs")[0], k8s.cluster.items("pods")[0]
    assert CANARY not in json.dumps(job) and CANARY not in json.dumps(pod)
    assert CANARY not in json.dumps(k8s.cluster.items("events"))
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    job_name = job["metadata"]["name"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": job_name + "-env", "key": "HF_TOKEN"}}} in env
    secret = k8s.cluster.items("secrets")[0]
    assert base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == CANARY
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    assert CANARY.encode() not in handle.read(), pid
            except OSError:
                continue
    k8s.play(stop_task(k8s, "secret"))
    assert_gone(k8s)


def test_absent_by_name_finds_the_service_without_the_registry(k8s):
    run = k8s.play(start_task(k8s, extra="name: lost\nwait: false"))
    assert run.rc == 0, run.output[-2000:]
    os.unlink(k8s.registry)
    stop = k8s.play(stop_task(k8s, "lost"))
    assert stop.task("Stop")["status"] == "changed", stop.output[-2000:]
    assert_gone(k8s)


def test_a_missing_namespace_or_pull_secret_is_named_before_anything_is_made(k8s):
    missing = k8s.play(start_task(k8s, extra="name: nons").replace(
        "namespace: %s" % k8s.cluster.namespace, "namespace: tao-nowhere"))
    msg = missing.task("Start")["result"]["msg"]
    assert "namespace tao-nowhere does not exist" in msg, msg
    nosecret = k8s.play(start_task(k8s, extra="name: nosecret\nimage_pull_secret: ngc-secret"))
    msg = nosecret.task("Start")["result"]["msg"]
    assert "image_pull_secret ngc-secret is not in namespace" in msg, msg
    ngc = k8s.play(start_task(k8s, extra="name: ngc", image="nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl"))
    assert "needs image_pull_secret" in ngc.task("Start")["result"]["msg"]
    assert k8s.cluster.ours() == {} and k8s.entries() == {}


def test_preflight_reports_the_cluster(k8s):
    run = k8s.play("- name: Preflight\n  tao.inference.tao_inference_preflight:\n    network_arch: cosmos-rl\n"
                   "    num_gpus: 1\n    image: %s\n" % IMAGE + k8s.connection)
    result = run.task("Preflight")["result"]
    assert run.rc == 0, run.output[-2000:]
    assert result["namespace"] == k8s.cluster.namespace and result["nodes"] == 1
    assert result["allocatable_gpus"] == {"tao-node-0": int(os.environ.get("TAO_K8S_GPUS", "1"))}


def test_kubectl_sees_what_the_collection_made(k8s):
    if subprocess.run(["sh", "-c", "command -v kubectl"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no kubectl on this machine")
    run = k8s.play(start_task(k8s, extra="name: kubectl\nwait: false"))
    assert run.rc == 0, run.output[-2000:]
    got = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, "-n", k8s.cluster.namespace, "get", "jobs,services",
                          "-l", MANAGED, "-o", "name"], capture_output=True, text=True, check=False, timeout=60)
    assert got.returncode == 0, got.stderr
    job_id = run.task("Start")["result"]["job_id"]
    assert "job.batch/tao-%s" % job_id in got.stdout and "service/tao-%s" % job_id in got.stdout
    k8s.play(stop_task(k8s, "kubectl"))
    assert_gone(k8s)


def test_the_start_and_stop_playbooks_and_the_preflight_role(k8s):
    options = {"kubeconfig": KUBECONFIG, "context": "tao-test", "namespace": k8s.cluster.namespace,
               "service_type": "NodePort"}
    run = k8s.playbook(os.path.join(ROOT, "playbooks", "start.yml"), {
        "tao_platform": "kubernetes", "tao_platform_options": options, "tao_network_arch": "cosmos-rl",
        "tao_model_path": "hf_model://a/b", "tao_image": IMAGE, "tao_num_gpus": 0, "tao_name": "k8s-play"})
    assert run.rc == 0, run.output[-3000:]
    job_id = run.task("Start the service")["result"]["job_id"]
    assert "%s: ready after" % job_id in run.stdout and "https://127.0.0.1:" in run.stdout
    role = k8s.play("- name: Preflight role\n  ansible.builtin.include_role:\n    name: tao.inference.kubernetes\n"
                    "  vars:\n    kubernetes_kubeconfig: %s\n    kubernetes_context: tao-test\n"
                    "    kubernetes_namespace: %s\n    kubernetes_image: %s\n    kubernetes_num_gpus: 4\n"
                    % (KUBECONFIG, k8s.cluster.namespace, IMAGE))
    assert role.rc == 0, role.output[-3000:]
    assert "namespace %s: 1 node(s)" % k8s.cluster.namespace in role.stdout
    assert "num_gpus 4 is more than any node offers" in role.output
    stop = k8s.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), {
        "tao_name": "k8s-play", "tao_platform": "kubernetes", "tao_platform_options": options})
    assert stop.rc == 0, stop.output[-3000:]
    assert_gone(k8s)
