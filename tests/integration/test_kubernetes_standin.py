"""The test cluster itself: scripts/ensure-kubernetes.sh and the stand-in API server, through the official
``kubernetes`` client.

Checks what the Kubernetes driver relies on: authentication, validation (422 with field paths), the
status codes of the REST verbs, a Job's pod running the emulator image on the Docker engine with its
readiness, Services (NodePort, LoadBalancer) and port-forward carrying real HTTP, image and scheduling
failures with their events, Secrets reaching a container without appearing on any command line or in
the stand-in's log, deletion with each propagation policy, and the script's idempotence and ``--down``.
Like every integration test it is skipped (by conftest) only when there is no Docker engine or image.
"""

import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from .conftest import IMAGE, ROOT, docker

SCRIPT = os.path.join(ROOT, "scripts", "ensure-kubernetes.sh")
LABEL = "tao.k8s-standin"
JOB_BLOB = json.dumps({"job_id": "standin", "specs": {"model_path": "hf_model://Qwen/Qwen2.5-0.5B-Instruct"},
                       "neural_network_name": "tao-dataservices"})
EMULATOR = ["python", "-m", "nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server",
            "--port", "8080", "--job", JOB_BLOB]
READY_PATH = "/api/v1/health/readiness"


def ensure(*args, env=None):
    """Run the script; its result."""
    return subprocess.run(["bash", SCRIPT] + list(args), capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, **(env or {})))


def wait_for(check, timeout=30.0, what="condition"):
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError("timed out after %ss waiting for %s; last: %r" % (timeout, what, last))


def status_of(exc):
    """The Status body of an ApiException."""
    return json.loads(exc.body)


def http_get(url, timeout=5):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def container_spec(name="main", image=IMAGE, command=None, **extra):
    """A container as a plain dict (what a driver sends)."""
    spec = {"name": name, "image": image, "command": command or ["python", "-c", "import time; time.sleep(600)"]}
    spec.update(extra)
    return spec


def job_body(name, containers, backoff_limit=0, labels=None, **pod_extra):
    """A batch/v1 Job running ``containers`` once."""
    pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": containers}
    pod.update(pod_extra)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": backoff_limit,
                     "template": {"metadata": {"labels": labels or {"app": name}}, "spec": pod}}}


def pod_body(name, containers, labels=None, **extra):
    """A bare Pod."""
    spec = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2, "containers": containers}
    spec.update(extra)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {"app": name}}, "spec": spec}


def containers_of(pod_uid):
    """Docker containers of a pod (running or not)."""
    return docker("ps", "-aq", "--filter", "label=io.kubernetes.pod.uid=%s" % pod_uid).stdout.split()


class Cluster:
    """The clients, the namespace of this module and the stand-in's files."""

    def __init__(self, kubeconfig):
        self.kubeconfig = kubeconfig
        self.dir = os.path.dirname(kubeconfig)
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.ns = "standin-%s" % uuid.uuid4().hex[:8]

    def pods(self, **kwargs):
        """Pods of the namespace."""
        return self.core.list_namespaced_pod(self.ns, **kwargs).items

    def job_pod(self, job):
        """The (first) pod of a Job."""
        pods = self.pods(label_selector="job-name=%s" % job)
        return pods[0] if pods else None

    def running_job_pod(self, job, timeout=20):
        """The Job's pod once it runs."""
        def running():
            pod = self.job_pod(job)
            return pod if pod and pod.status.phase == "Running" else None
        return wait_for(running, timeout, "the pod of job %s to run" % job)

    def job_status(self, job, predicate, timeout=20, what="job status"):
        """The Job once ``predicate(job)`` holds."""
        def check():
            found = self.batch.read_namespaced_job_status(job, self.ns)
            return found if predicate(found) else None
        return wait_for(check, timeout, what)

    def pod_phase(self, name, phase, timeout=20):
        """Wait for a pod's phase."""
        wait_for(lambda: self.core.read_namespaced_pod(name, self.ns).status.phase == phase, timeout,
                 "pod %s to be %s" % (name, phase))

    def waiting(self, name, timeout=10):
        """The waiting state of a pod's first container, once it has one."""
        def check():
            statuses = self.core.read_namespaced_pod(name, self.ns).status.container_statuses
            return statuses[0].state.waiting if statuses else None
        return wait_for(check, timeout, "a waiting state of %s" % name)

    def events(self, name):
        """Events about an object, by name."""
        return self.core.list_namespaced_event(self.ns, field_selector="involvedObject.name=%s" % name).items

    def wait_ready(self, job, timeout=40):
        """The Job's pod once Running and Ready."""
        def ready():
            pod = self.job_pod(job)
            if pod and pod.status.phase == "Running" and pod.status.container_statuses \
                    and all(c.ready for c in pod.status.container_statuses):
                return pod
            return None
        return wait_for(ready, timeout, "pod of job %s to be ready" % job)

    def wait_gone(self, read, timeout=30, what="object"):
        """Until ``read()`` answers 404."""
        def gone():
            try:
                read()
            except ApiException as exc:
                return exc.status == 404
            return False
        wait_for(gone, timeout, "%s to be gone" % what)

    def delete_job(self, name):
        """Delete a Job and its pods (Background), ignoring a missing one."""
        try:
            self.batch.delete_namespaced_job(name, self.ns, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def raw(self, method, path, body=None, authorization=None, content_type="application/json"):
        """(HTTP status, decoded JSON) of a request sent as is (the client validates bodies before sending);
        ``authorization`` replaces the header (an empty string: none)."""
        headers = {"Content-Type": content_type}
        if authorization is None:
            authorization = self.api.configuration.auth_settings()["BearerToken"]["value"]
        if authorization:
            headers["Authorization"] = authorization
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api.configuration.host + path, data=data, method=method, headers=headers)
        context = ssl.create_default_context(cafile=os.path.join(self.dir, "ca.crt"))
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def log(self):
        """The stand-in's log."""
        with open(os.path.join(self.dir, "server.log"), encoding="utf-8", errors="replace") as handle:
            return handle.read()


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture():
    """The shared stand-in (started or reused by the script) and a namespace deleted at the end."""
    result = ensure()
    assert result.returncode == 0, result.stderr
    kubeconfig = result.stdout.strip()
    assert kubeconfig.endswith("/.build/kubernetes/kubeconfig"), result.stdout
    cluster = Cluster(kubeconfig)
    cluster.core.create_namespace({"metadata": {"name": cluster.ns}})
    yield cluster
    cluster.core.delete_namespace(cluster.ns)
    cluster.wait_gone(lambda: cluster.core.read_namespace(cluster.ns), 60, "namespace")
    left = docker("ps", "-aq", "--filter", "label=io.kubernetes.pod.namespace=%s" % cluster.ns).stdout.split()
    assert not left, "containers left behind in %s: %s" % (cluster.ns, left)


@pytest.fixture(scope="module", name="emulator")
def emulator_fixture(cluster):
    """A Job running the emulator image with a readiness probe; its ready pod."""
    container = container_spec(command=EMULATOR, ports=[{"containerPort": 8080, "name": "http"}],
                               env=[{"name": "TAO_EMULATOR_LOAD_SECONDS", "value": "0.5"}],
                               readinessProbe={"httpGet": {"path": READY_PATH, "port": 8080}, "periodSeconds": 10})
    cluster.batch.create_namespaced_job(cluster.ns, job_body("emulator", [container], labels={"app": "emulator"}))
    yield cluster.wait_ready("emulator")
    cluster.delete_job("emulator")


# ----------------------------------------------------------------------------------------------
# The API: authentication, validation, status codes, selectors, watch
# ----------------------------------------------------------------------------------------------
def test_token_required(cluster):
    """No token or a wrong one: 401 Unauthorized as a Status."""
    for authorization in ("", "Bearer wrong"):
        code, body = cluster.raw("GET", "/api/v1/namespaces", authorization=authorization)
        assert code == 401
        assert body["kind"] == "Status" and body["reason"] == "Unauthorized" and body["code"] == 401
    assert cluster.raw("GET", "/api/v1/namespaces")[0] == 200


def test_invalid_objects_are_refused(cluster):
    """A string containerPort, an unknown field and bad names: 422 Invalid with the field paths."""
    jobs = "/apis/batch/v1/namespaces/%s/jobs" % cluster.ns
    code, body = cluster.raw("POST", jobs, job_body("bad-port", [container_spec(ports=[{"containerPort": "8080"}])]))
    assert code == 422 and body["reason"] == "Invalid" and body["details"]["kind"] == "Job", body
    assert body["details"]["name"] == "bad-port" and body["message"].startswith('Job.batch "bad-port" is invalid: ')
    assert "spec.template.spec.containers[0].ports[0].containerPort" in [c["field"] for c in body["details"]["causes"]]

    code, body = cluster.raw("POST", jobs, job_body("unknown-field", [container_spec(bogus=True)]))
    assert code == 422, body
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.template.spec.containers[0].bogus"]

    code, body = cluster.raw("POST", "/api/v1/namespaces/%s/services" % cluster.ns,
                             {"metadata": {"name": "Bad_Name"}, "spec": {"ports": [{"port": 80}]}})
    assert code == 422 and body["details"]["causes"][0]["field"] == "metadata.name", body

    with pytest.raises(ApiException) as info:
        cluster.batch.create_namespaced_job(cluster.ns, job_body("j" * 64, [container_spec()]))
    assert info.value.status == 422 and "must be no more than 63 characters" in status_of(info.value)["message"]

    with pytest.raises(ApiException) as info:
        cluster.batch.create_namespaced_job(cluster.ns, job_body("always", [container_spec()], restartPolicy="Always"))
    assert info.value.status == 422
    assert status_of(info.value)["details"]["causes"][0]["field"] == "spec.template.spec.restartPolicy"

    gpu = {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "2"}}
    with pytest.raises(ApiException) as info:
        cluster.core.create_namespaced_pod(cluster.ns, pod_body("gpu-mismatch", [container_spec(resources=gpu)]))
    assert status_of(info.value)["details"]["causes"][0]["field"] == "spec.containers[0].resources.requests[nvidia.com/gpu]"
    assert cluster.batch.list_namespaced_job(cluster.ns).items == []


def test_status_codes(cluster):
    """201 create, 409 AlreadyExists, 404 NotFound, merge and strategic patches, 409 on a stale update."""
    secret = {"metadata": {"name": "dup", "labels": {"a": "1"}}, "stringData": {"k": "v"}}
    created = cluster.core.create_namespaced_secret(cluster.ns, secret)
    assert created.data == {"k": base64.b64encode(b"v").decode()} and created.metadata.uid
    assert created.metadata.creation_timestamp is not None and created.metadata.resource_version.isdigit()
    with pytest.raises(ApiException) as info:
        cluster.core.create_namespaced_secret(cluster.ns, secret)
    assert info.value.status == 409 and status_of(info.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as info:
        cluster.core.read_namespaced_secret("missing", cluster.ns)
    body = status_of(info.value)
    assert info.value.status == 404 and body["reason"] == "NotFound" and body["message"] == 'secrets "missing" not found'
    with pytest.raises(ApiException) as info:
        cluster.batch.read_namespaced_job("missing", cluster.ns)
    assert status_of(info.value)["message"] == 'jobs.batch "missing" not found'

    patched = cluster.core.patch_namespaced_secret("dup", cluster.ns, {"metadata": {"labels": {"b": "2", "a": None}}})
    assert patched.metadata.labels == {"b": "2"}
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ApiException) as info:
        cluster.core.replace_namespaced_secret("dup", cluster.ns, cluster.api.sanitize_for_serialization(created))
    assert info.value.status == 409 and status_of(info.value)["reason"] == "Conflict"
    deleted = cluster.core.delete_namespaced_secret("dup", cluster.ns)
    assert deleted["status"] == "Success" and deleted["details"]["name"] == "dup"
    with pytest.raises(ApiException) as info:
        cluster.core.delete_namespaced_secret("dup", cluster.ns)
    assert info.value.status == 404


def test_selectors_and_watch(cluster):
    """labelSelector (=, ==, !=, exists, !, in, notin), fieldSelector and a watch seeing a create."""
    for name, labels in (("sel-a", {"tier": "a", "role": "x"}), ("sel-b", {"tier": "b"}), ("sel-c", {"other": "y"})):
        cluster.core.create_namespaced_secret(cluster.ns, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs):
        return sorted(s.metadata.name for s in cluster.core.list_namespaced_secret(cluster.ns, **kwargs).items
                      if s.metadata.name.startswith("sel-"))

    assert names(label_selector="tier=a") == ["sel-a"]
    assert names(label_selector="tier==b") == ["sel-b"]
    assert names(label_selector="tier!=a") == ["sel-b", "sel-c"]
    assert names(label_selector="tier") == ["sel-a", "sel-b"]
    assert names(label_selector="!tier") == ["sel-c"]
    assert names(label_selector="tier in (a,b),role") == ["sel-a"]
    assert names(label_selector="tier notin (a)") == ["sel-b", "sel-c"]
    assert names(field_selector="metadata.name=sel-b") == ["sel-b"]
    listed = cluster.core.list_namespaced_secret(cluster.ns, label_selector="tier")
    assert listed.kind == "SecretList" and listed.metadata.resource_version.isdigit()
    with pytest.raises(ApiException) as info:
        cluster.core.list_namespaced_secret(cluster.ns, field_selector="data.k=v")
    assert info.value.status == 400

    start = cluster.core.list_namespaced_secret(cluster.ns).metadata.resource_version
    cluster.core.create_namespaced_secret(cluster.ns, {"metadata": {"name": "sel-d", "labels": {"tier": "d"}}})
    stream = watch.Watch().stream(cluster.core.list_namespaced_secret, cluster.ns, label_selector="tier=d",
                                  resource_version=start, timeout_seconds=5)
    first = next(stream)
    assert first["type"] == "ADDED" and first["object"].metadata.name == "sel-d"
    for name in ("sel-a", "sel-b", "sel-c", "sel-d"):
        cluster.core.delete_namespaced_secret(name, cluster.ns)


# ----------------------------------------------------------------------------------------------
# Pods on the Docker engine
# ----------------------------------------------------------------------------------------------
def test_job_pod_runs_and_becomes_ready(cluster, emulator):
    """The Job's pod: labels, owner, status like a kubelet's; its pod IP answers; events; logs."""
    pod = emulator
    labels = pod.metadata.labels
    job = cluster.batch.read_namespaced_job("emulator", cluster.ns)
    assert pod.metadata.name.startswith("emulator-") and len(pod.metadata.name) == len("emulator-") + 5
    assert labels["app"] == "emulator" and labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "emulator"
    assert labels["controller-uid"] == labels["batch.kubernetes.io/controller-uid"] == job.metadata.uid
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Job", "emulator", job.metadata.uid, True)
    assert pod.spec.node_name == "tao-node-0" and pod.status.host_ip == "127.0.0.1" and pod.status.start_time
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == conditions["Initialized"] == conditions["Ready"] == "True"
    status = pod.status.container_statuses[0]
    assert status.name == "main" and status.ready and status.restart_count == 0 and status.image == IMAGE
    assert status.state.running.started_at is not None and status.container_id.startswith("docker://")
    assert http_get("http://%s:8080%s" % (pod.status.pod_ip, READY_PATH))[0] == 200
    job = cluster.job_status("emulator", lambda j: j.status.ready == 1, 10, "job status ready=1")
    assert job.status.active == 1 and job.status.start_time is not None and not job.status.conditions
    reasons = [e.reason for e in cluster.events(pod.metadata.name)]
    for reason in ("Scheduled", "Pulled", "Created", "Started"):
        assert reason in reasons
    assert "SuccessfulCreate" in [e.reason for e in cluster.events("emulator")]
    docker_ids = containers_of(pod.metadata.uid)
    assert len(docker_ids) == 1
    labels = json.loads(docker("inspect", "--format", "{{json .Config.Labels}}", docker_ids[0]).stdout)
    assert labels[LABEL] == cluster.dir and labels["io.kubernetes.pod.name"] == pod.metadata.name
    assert labels[LABEL + ".namespace"] == cluster.ns and labels[LABEL + ".pod"] == pod.metadata.name
    assert labels[LABEL + ".uid"] == pod.metadata.uid and labels[LABEL + ".container"] == "main"
    log = cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.ns, tail_lines=50)
    assert "GET %s" % READY_PATH in log


def test_load_balancer_and_node_port(cluster, emulator):
    """A LoadBalancer gets its own 127.0.0.x; it and a NodePort on 127.0.0.1 reach the ready pod."""
    ports = [{"name": "http", "port": 8000, "targetPort": "http"}]
    lb = cluster.core.create_namespaced_service(cluster.ns, {
        "metadata": {"name": "emulator-lb"}, "spec": {"type": "LoadBalancer", "selector": {"app": "emulator"}, "ports": ports}})
    node_port = cluster.core.create_namespaced_service(cluster.ns, {
        "metadata": {"name": "emulator-np"}, "spec": {"type": "NodePort", "selector": {"app": "emulator"},
                                                      "ports": [{"port": 8080}]}})
    try:
        assert lb.spec.cluster_ip.startswith("10.96.") and 30000 <= lb.spec.ports[0].node_port <= 32767
        ingress = wait_for(lambda: cluster.core.read_namespaced_service("emulator-lb", cluster.ns).status.load_balancer.ingress,
                           10, "load balancer ingress")
        address = ingress[0].ip
        assert address.startswith("127.0.0.") and address != "127.0.0.1"
        assert http_get("http://%s:8000%s" % (address, READY_PATH))[0] == 200
        assert http_get("http://127.0.0.1:%d%s" % (lb.spec.ports[0].node_port, READY_PATH))[0] == 200
        assert http_get("http://127.0.0.1:%d%s" % (node_port.spec.ports[0].node_port, READY_PATH))[0] == 200
        endpoints = cluster.core.read_namespaced_endpoints("emulator-np", cluster.ns)
        assert [a.ip for a in endpoints.subsets[0].addresses] == [emulator.status.pod_ip]
        assert "EnsuredLoadBalancer" in [e.reason for e in cluster.events("emulator-lb")]
    finally:
        cluster.core.delete_namespaced_service("emulator-lb", cluster.ns)
        cluster.core.delete_namespaced_service("emulator-np", cluster.ns)
    with pytest.raises(OSError):
        urllib.request.urlopen("http://%s:8000/" % address, timeout=2)  # pylint: disable=consider-using-with


def test_portforward(cluster, emulator):
    """The client's portforward() carries an HTTP request to the pod's port."""
    forward = portforward(cluster.core.connect_get_namespaced_pod_portforward, emulator.metadata.name, cluster.ns,
                          ports="8080")
    sock = forward.socket(8080)
    sock.setblocking(True)
    sock.sendall(b"GET " + READY_PATH.encode() + b" HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
    answer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"status": "ready"' in answer
    assert forward.error(8080) is None


def test_missing_image(cluster):
    """An image the engine does not have: ErrImagePull, then ImagePullBackOff, with the kubelet's events; a malformed
    reference: InvalidImageName."""
    image = "tao-inference-missing:0.0.%s" % uuid.uuid4().hex[:6]
    cluster.core.create_namespaced_pod(cluster.ns, pod_body("no-image", [container_spec(image=image)]))
    try:
        seen = set()

        def backoff():
            pod = cluster.core.read_namespaced_pod("no-image", cluster.ns)
            waiting = pod.status.container_statuses[0].state.waiting if pod.status.container_statuses else None
            if waiting:
                seen.add(waiting.reason)
            return "ErrImagePull" in seen and "ImagePullBackOff" in seen and pod

        pod = wait_for(backoff, 15, "ErrImagePull then ImagePullBackOff")
        assert pod.status.phase == "Pending"
        events = cluster.events("no-image")
        failed = [e.message for e in events if e.reason == "Failed"]
        assert any(m.startswith('Failed to pull image "%s"' % image) for m in failed), failed
        assert "Error: ErrImagePull" in failed and "Error: ImagePullBackOff" in failed
        assert any(e.reason == "BackOff" and e.message == 'Back-off pulling image "%s"' % image for e in events)
        assert all(e.involved_object.kind == "Pod" and e.involved_object.uid == pod.metadata.uid for e in events)
        with pytest.raises(ApiException) as info:
            cluster.core.read_namespaced_pod_log("no-image", cluster.ns)
        assert info.value.status == 400 and "waiting to start" in status_of(info.value)["message"]
        cluster.core.create_namespaced_pod(cluster.ns, pod_body("bad-ref", [container_spec(image="Not/A:Reference")]))
        waiting = cluster.waiting("bad-ref")
        assert waiting.reason == "InvalidImageName" and "invalid reference format" in waiting.message
    finally:
        cluster.core.delete_namespaced_pod("no-image", cluster.ns)
        cluster.core.delete_namespaced_pod("bad-ref", cluster.ns)
    cluster.wait_gone(lambda: cluster.core.read_namespaced_pod("no-image", cluster.ns), 15, "pod")


def test_gpus_are_scheduled(cluster):
    """The node's GPUs are accounted: a pod asking more stays Pending/Unschedulable and is scheduled once
    a GPU is free."""
    gpus = int(cluster.core.read_node("tao-node-0").status.allocatable["nvidia.com/gpu"])
    gpu = {"limits": {"nvidia.com/gpu": str(gpus)}}
    cluster.core.create_namespaced_pod(cluster.ns, pod_body("gpu-holder", [container_spec(resources=gpu)]))
    try:
        cluster.pod_phase("gpu-holder", "Running")
        cluster.core.create_namespaced_pod(cluster.ns, pod_body("gpu-waiter", [container_spec(resources=gpu)]))

        def unschedulable():
            pod = cluster.core.read_namespaced_pod("gpu-waiter", cluster.ns)
            scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
            return scheduled and scheduled[0].status == "False" and pod

        pod = wait_for(unschedulable, 10, "PodScheduled=False")
        scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"][0]
        assert pod.status.phase == "Pending" and scheduled.reason == "Unschedulable" and not pod.spec.node_name
        assert scheduled.message.startswith("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
        events = [e for e in cluster.events("gpu-waiter") if e.reason == "FailedScheduling"]
        assert events and events[0].type == "Warning" and events[0].message == scheduled.message
        assert events[0].source.component == "default-scheduler" and events[0].count >= 1
        assert not containers_of(pod.metadata.uid)

        cluster.core.delete_namespaced_pod("gpu-holder", cluster.ns, grace_period_seconds=0)
        cluster.pod_phase("gpu-waiter", "Running")  # scheduled once the GPU is free
    finally:
        for name in ("gpu-holder", "gpu-waiter"):
            try:
                cluster.core.delete_namespaced_pod(name, cluster.ns, grace_period_seconds=0)
            except ApiException as exc:
                assert exc.status == 404
    cluster.wait_gone(lambda: cluster.core.read_namespaced_pod("gpu-waiter", cluster.ns), 15, "pod")


def test_secret_env_stays_off_command_lines(cluster):
    """A secretKeyRef value reaches the container's environment, but no process's argv and not the stand-in's
    log; a missing key holds the container in CreateContainerConfigError."""
    value = "tao-standin-secret-%s" % uuid.uuid4().hex
    cluster.core.create_namespaced_secret(cluster.ns, {"metadata": {"name": "token"}, "stringData": {"hf": value}})
    echo = ["python", "-c", "import hashlib, os, sys, time; print('sha256=' + hashlib.sha256("
                            "os.environ['HF_TOKEN'].encode()).hexdigest(), flush=True); time.sleep(600)"]
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "hf"}}},
           {"name": "PLAIN", "value": "plain-value"}]
    cluster.core.create_namespaced_pod(cluster.ns, pod_body("env-echo", [container_spec(command=echo, env=env)]))
    missing = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "nope"}}}]
    cluster.core.create_namespaced_pod(cluster.ns, pod_body("env-missing", [container_spec(env=missing)]))
    try:
        expected = "sha256=" + hashlib.sha256(value.encode()).hexdigest()

        def echoed():
            try:
                return expected in cluster.core.read_namespaced_pod_log("env-echo", cluster.ns)
            except ApiException:
                return False

        wait_for(echoed, 20, "the container to print the hash of its HF_TOKEN")
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as handle:
                        assert value.encode() not in handle.read(), "secret on the command line of pid %s" % pid
                except OSError:
                    continue
        pod = cluster.core.read_namespaced_pod("env-missing", cluster.ns)
        waiting = cluster.waiting("env-missing")
        assert waiting.reason == "CreateContainerConfigError"
        assert waiting.message == "couldn't find key nope in Secret %s/token" % cluster.ns
        assert any(e.reason == "Failed" and e.type == "Warning" for e in cluster.events("env-missing"))
        assert not containers_of(pod.metadata.uid)
        assert value not in cluster.log() and base64.b64encode(value.encode()).decode() not in cluster.log()
    finally:
        for name in ("env-echo", "env-missing"):
            cluster.core.delete_namespaced_pod(name, cluster.ns, grace_period_seconds=0)
        cluster.core.delete_namespaced_secret("token", cluster.ns)


def test_volumes_and_command(cluster, tmp_path):
    """emptyDir (Memory) at /dev/shm sets the shm size, hostPath is a bind mount, a claim is a docker volume of the
    stand-in's; command, args and workingDir are the container's; docker runs it with an init process."""
    host = tmp_path / "host"
    host.mkdir()
    claim = cluster.core.create_namespaced_persistent_volume_claim(cluster.ns, {
        "metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    script = ("import os; s = os.statvfs('/dev/shm'); print('shm', s.f_blocks * s.f_frsize); print('cwd', os.getcwd()); "
              "open('/host/out.txt', 'w').write('from the pod'); open('x', 'w').write('1'); print('claim', os.listdir('.'))")
    mounts = [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "host", "mountPath": "/host"},
              {"name": "claim", "mountPath": "/claim"}]
    volumes = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
               {"name": "host", "hostPath": {"path": str(host), "type": "Directory"}},
               {"name": "claim", "persistentVolumeClaim": {"claimName": "data"}}]
    container = container_spec(command=["python"], args=["-c", script], workingDir="/claim", volumeMounts=mounts)
    cluster.core.create_namespaced_pod(cluster.ns, pod_body("volumes", [container], volumes=volumes))
    try:
        cluster.pod_phase("volumes", "Succeeded")
        log = cluster.core.read_namespaced_pod_log("volumes", cluster.ns)
        assert log == "shm %d\ncwd /claim\nclaim ['x']\n" % (256 * 2 ** 20), log
        assert (host / "out.txt").read_text() == "from the pod"
        bound = cluster.core.read_namespaced_persistent_volume_claim("data", cluster.ns)
        assert bound.status.phase == "Bound" and bound.spec.volume_name == "pvc-" + claim.metadata.uid
        volume = "k8s-standin-pvc-" + claim.metadata.uid
        assert docker("volume", "ls", "-q", "--filter", "label=%s=%s" % (LABEL, cluster.dir)).stdout.split().count(volume) == 1
        pod = cluster.core.read_namespaced_pod("volumes", cluster.ns)
        host_config = json.loads(docker("inspect", "--format", "{{json .HostConfig}}", containers_of(pod.metadata.uid)[0]).stdout)
        assert host_config["ShmSize"] == 256 * 2 ** 20 and host_config["Init"] is True
    finally:
        cluster.core.delete_namespaced_pod("volumes", cluster.ns)
        cluster.core.delete_namespaced_persistent_volume_claim("data", cluster.ns)
    cluster.wait_gone(lambda: cluster.core.read_namespaced_persistent_volume_claim("data", cluster.ns), 15, "claim")
    assert volume not in docker("volume", "ls", "-q").stdout.split()


# ----------------------------------------------------------------------------------------------
# Deletion and garbage collection
# ----------------------------------------------------------------------------------------------
def test_background_delete_collects_dependents(cluster):
    """Background: the Job's pod, its container and a Secret owned by the Job are all removed."""
    job = cluster.batch.create_namespaced_job(cluster.ns, job_body("bg", [container_spec()]))
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "bg", "uid": job.metadata.uid}
    cluster.core.create_namespaced_secret(cluster.ns, {"metadata": {"name": "bg-owned", "ownerReferences": [owner]},
                                                       "stringData": {"k": "v"}})
    pod = cluster.running_job_pod("bg")
    assert containers_of(pod.metadata.uid)
    answer = cluster.batch.delete_namespaced_job("bg", cluster.ns, propagation_policy="Background")
    assert answer["status"] == "Success"
    cluster.wait_gone(lambda: cluster.core.read_namespaced_pod(pod.metadata.name, cluster.ns), 20, "pod")
    cluster.wait_gone(lambda: cluster.core.read_namespaced_secret("bg-owned", cluster.ns), 10, "owned secret")
    assert not containers_of(pod.metadata.uid)
    assert "Killing" in [e.reason for e in cluster.events(pod.metadata.name)]


def test_delete_without_policy_orphans_pods(cluster):
    """A Job delete without a policy orphans its pods (as batch/v1 does): the pod keeps running, ownerless."""
    cluster.batch.create_namespaced_job(cluster.ns, job_body("orphaner", [container_spec()]))
    pod = cluster.running_job_pod("orphaner")
    try:
        cluster.batch.delete_namespaced_job("orphaner", cluster.ns)
        cluster.wait_gone(lambda: cluster.batch.read_namespaced_job("orphaner", cluster.ns), 10, "job")
        time.sleep(1)
        kept = cluster.core.read_namespaced_pod(pod.metadata.name, cluster.ns)
        assert kept.metadata.owner_references is None and kept.metadata.deletion_timestamp is None
        assert kept.status.phase == "Running" and containers_of(pod.metadata.uid)
    finally:
        cluster.core.delete_namespaced_pod(pod.metadata.name, cluster.ns, grace_period_seconds=0)
    cluster.wait_gone(lambda: cluster.core.read_namespaced_pod(pod.metadata.name, cluster.ns), 15, "pod")
    assert not containers_of(pod.metadata.uid)


def test_failed_pod_fails_the_job(cluster):
    """A container exiting 3 with backoffLimit 0: terminated Error, pod Failed, Job Failed BackoffLimitExceeded."""
    cluster.batch.create_namespaced_job(cluster.ns, job_body("fails", [container_spec(
        command=["python", "-c", "import sys; print('bye'); sys.exit(3)"])]))
    try:
        job = cluster.job_status("fails", lambda j: j.status.conditions, 20, "the job to finish")
        failed = {c.type: c for c in job.status.conditions}
        assert failed["Failed"].status == "True" and failed["Failed"].reason == "BackoffLimitExceeded"
        assert job.status.failed == 1 and not job.status.active
        pod = cluster.job_pod("fails")
        terminated = pod.status.container_statuses[0].state.terminated
        assert pod.status.phase == "Failed" and terminated.exit_code == 3 and terminated.reason == "Error"
        assert cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.ns) == "bye\n"
    finally:
        cluster.delete_job("fails")


# ----------------------------------------------------------------------------------------------
# The script
# ----------------------------------------------------------------------------------------------
def test_script_idempotent_and_down(tmp_path):
    """A second stand-in in its own folder: the script reuses it, writes a private kubeconfig, and --down
    stops it and removes the containers it made (the shared stand-in is not touched)."""
    env = {"TAO_K8S_DIR": str(tmp_path / "k8s"), "TAO_K8S_GPUS": "2"}
    first = ensure(env=env)
    assert first.returncode == 0, first.stderr
    kubeconfig = first.stdout.strip()
    assert kubeconfig == str(tmp_path / "k8s" / "kubeconfig") and os.stat(kubeconfig).st_mode & 0o777 == 0o600
    with open(kubeconfig, encoding="utf-8") as handle:
        text = handle.read()
    assert "current-context: tao-test" in text and "certificate-authority-data:" in text and "token:" in text
    pid = (tmp_path / "k8s" / "server.pid").read_text().strip()
    second = ensure(env=env)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
    assert (tmp_path / "k8s" / "server.pid").read_text().strip() == pid

    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    assert core.read_node("tao-node-0").status.capacity["nvidia.com/gpu"] == "2"
    core.create_namespaced_pod("default", pod_body("sleeper", [container_spec()]))

    def running():
        return docker("ps", "-q", "--filter", "label=%s=%s" % (LABEL, tmp_path / "k8s")).stdout.split()

    wait_for(running, 20, "the second stand-in's container")
    down = ensure("--down", env=env)
    assert down.returncode == 0, down.stderr
    assert not docker("ps", "-aq", "--filter", "label=%s=%s" % (LABEL, tmp_path / "k8s")).stdout.strip()
    assert not os.path.exists(kubeconfig) and not os.path.exists(tmp_path / "k8s" / "server.pid")
    assert subprocess.run(["kill", "-0", pid], capture_output=True, check=False).returncode != 0


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_reads_the_cluster(cluster):
    """kubectl's discovery, get and describe work against the stand-in."""
    def kubectl(*args):
        return subprocess.run(["kubectl", "--kubeconfig", cluster.kubeconfig] + list(args), capture_output=True,
                              text=True, timeout=60, check=False)

    nodes = kubectl("get", "nodes", "-o", "name")
    assert nodes.returncode == 0 and nodes.stdout.strip() == "node/tao-node-0", nodes.stderr
    described = kubectl("describe", "node", "tao-node-0")
    assert described.returncode == 0 and "nvidia.com/gpu" in described.stdout, described.stderr
    namespaces = kubectl("get", "namespaces")
    assert namespaces.returncode == 0 and cluster.ns in namespaces.stdout, namespaces.stderr
