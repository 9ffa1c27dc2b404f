"""platform: lepton through ansible-playbook, against the stand-in Lepton API.

`make test` starts the stand-in (scripts/ensure-lepton.sh): it checks every body against leptonai's own
models, runs each deployment's replicas on the local Docker engine with the real image and command, and
serves each endpoint on loopback behind the endpoint's token. The workspace comes from the environment,
as a Lepton user sets it (LEPTON_WORKSPACE_ID, _URL, _TOKEN). Every test names its services uniquely and
checks that nothing of them is left: deployments, secrets, containers.
"""

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .conftest import IMAGE, ROOT, docker

ENV_FILE = os.path.join(ROOT, ".build", "lepton", "env")
VIEWER_TOKEN = os.path.join(ROOT, ".build", "lepton", "viewer-token")
SERVER_LOG = os.path.join(ROOT, ".build", "lepton", "server.log")
RUN = uuid.uuid4().hex[:6]
CANARY = "canary-lepton-" + uuid.uuid4().hex
DEMO = os.path.join(ROOT, "playbooks", "files", "demo.png")


def wait_for(predicate, seconds, step=0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def read_env():
    with open(ENV_FILE) as handle:
        return dict(line.strip().split("=", 1) for line in handle if "=" in line)


class Workspace(object):
    """The stand-in's API, with the workspace token: to look at what the modules made."""

    def __init__(self, env):
        self.env = env
        self.url = env["LEPTON_WORKSPACE_URL"]
        self.token = env["LEPTON_WORKSPACE_TOKEN"]
        self.http = httpx.Client(headers={"Authorization": "Bearer " + self.token}, timeout=30)

    def get(self, path):
        response = self.http.get(self.url + path)
        response.raise_for_status()
        return response.json()

    def deployments(self, registry):
        """Our deployments made with this test's registry."""
        found = []
        for item in self.get("/deployments"):
            labels = item["metadata"].get("labels") or {}
            if labels.get("tao.inference/managed-by") == "tao.inference" and registry_of(labels) == registry:
                found.append(item)
        return found

    def secrets(self, job_ids):
        prefixes = tuple("tao-%s-" % j.replace("-", "") for j in job_ids)
        return [s["name"] for s in self.get("/usersecrets") if prefixes and s["name"].startswith(prefixes)]

    def journal(self):
        response = self.http.get(self.url.split("/api/")[0] + "/_standin/journal")
        response.raise_for_status()
        return response.json()

    def delete(self, name):
        self.http.delete(self.url + "/deployments/" + name)


def registry_of(labels):
    import base64

    chunks = "".join(labels.get("tao.inference/registry-%d" % i, "") for i in range(8))
    if not chunks:
        return None
    return base64.b32decode(chunks.upper() + "=" * (-len(chunks) % 8)).decode()


def quota_gpus(lep):
    return lep.workspace.get("/workspace")["resource_quota"]["limit"]["accelerator_num"]


def containers(name):
    return docker("ps", "-aq", "--filter", "label=tao.lepton-standin.deployment=%s" % name).stdout.split()


@pytest.fixture
def lep(harness):
    if not os.path.exists(ENV_FILE):
        pytest.fail("no test workspace: run scripts/ensure-lepton.sh (make test does)")
    env = read_env()
    workspace = Workspace(env)
    harness.workspace = workspace
    harness.lepton_env = env
    harness.job_ids = set()
    yield harness
    for entry in harness.entries().values():
        harness.job_ids.add(entry["job_id"])
    for item in workspace.deployments(harness.registry):
        harness.job_ids.add(item["metadata"]["labels"]["tao.inference/job-id"])
        workspace.delete(item["metadata"]["id"])
    for secret in workspace.secrets(harness.job_ids):
        workspace.http.delete(workspace.url + "/usersecrets/" + secret)
    workspace.http.close()


def start_task(name, title="Start", extra="", image=IMAGE, shape="cpu.small", gpus=0):
    lines = ["- name: %s" % title, "  tao.inference.tao_inference_service:", "    platform: lepton",
             "    network_arch: cosmos-rl", "    model_path: hf_model://nvidia/Cosmos-Reason1-7B",
             "    image: %s" % image, "    num_gpus: %d" % gpus, "    resource_shape: %s" % shape, "    wait_timeout: 120"]
    if name:
        lines.append("    name: %s" % name)
    lines += ["    %s" % line for line in extra.splitlines() if line]
    return "\n".join(lines + ["  register: svc", ""])


def stop_task(name, title="Stop"):
    return "- name: %s\n  tao.inference.tao_inference_service:\n    platform: lepton\n    name: %s\n    state: absent\n" % (
        title, name)


ASK = """\
- name: Ask
  tao.inference.tao_inference_request:
    name: %s
    prompt: What is in the picture?
    media: [%s]
    sampling: {}
  register: answer
"""


def assert_nothing_left(lep):
    """No deployment of this test's registry, no secret of its services, no container of this run, no entry."""
    assert lep.workspace.deployments(lep.registry) == []
    assert lep.workspace.secrets(lep.job_ids) == []
    running = docker("ps", "-a", "--filter", "label=tao.lepton-standin",
                     "--format", '{{.Label "tao.lepton-standin.deployment"}}').stdout.split()
    assert [d for d in running if RUN in d] == []
    assert lep.entries() == {}


def test_start_ready_request_stop_and_idempotency_by_name(lep):
    name = "lep-main-%s" % RUN
    run = lep.play(start_task(name) + ASK % (name, DEMO), env=lep.lepton_env)
    assert run.rc == 0, run.output[-3000:]
    service = run.task("Start")["result"]
    lep.job_ids.add(service["job_id"])
    assert service["platform_job_id"] == name and service["lepton_deployment"] == name
    assert service["lepton_workspace"] == lep.lepton_env["LEPTON_WORKSPACE_ID"]
    assert service["host_url"].startswith("http://127.0.0.1:") and service["readiness"]["state"] == "ready"
    assert service["endpoint_auth"]["source"] == "LEPTON_WORKSPACE_TOKEN"
    assert "cosmos-rl answered 'What is in the picture?'" in run.task("Ask")["result"]["content"]
    deployment = lep.workspace.get("/deployments/" + name)
    assert deployment["status"]["state"] == "Ready"
    assert deployment["spec"]["api_tokens"] == [{"value_from": {"token_name_ref": "WORKSPACE_TOKEN"}}]
    assert deployment["spec"]["container"]["command"][:2] == ["/bin/bash", "-c"]
    assert {"name": "TAO_EXECUTION_BACKEND", "value": "lepton"} in deployment["spec"]["envs"]
    labels = deployment["metadata"]["labels"]
    assert labels["tao.inference/job-id"] == service["job_id"] and registry_of(labels) == lep.registry
    forwarded = [j for j in lep.workspace.journal() if j["kind"] == "ingress" and j["deployment"] == name]
    assert forwarded and all(j["authorization_forwarded"] is False for j in forwarded)
    assert any(j["path"] == "/v1/chat/completions" and j["status"] == 200 for j in forwarded)
    assert len(containers(name)) == 1

    # The same name and spec: kept, with its job_id. A changed spec: replaced under the same deployment name.
    again = lep.play(start_task(name), env=lep.lepton_env)
    assert again.task("Start")["status"] == "ok" and again.task("Start")["result"]["job_id"] == service["job_id"]
    changed = lep.play(start_task(name, extra="lepton_replicas: 2"), env=lep.lepton_env)
    result = changed.task("Start")["result"]
    assert changed.task("Start")["status"] == "changed", changed.output[-3000:]
    assert result["job_id"] != service["job_id"] and result["recreated_because"] == ["platform_options.replicas"]
    lep.job_ids.add(result["job_id"])
    assert len(lep.workspace.get("/deployments/%s/replicas" % name)) == 2 and len(containers(name)) == 2
    info = lep.play("- name: Info\n  tao.inference.tao_inference_info:\n", env=lep.lepton_env)
    listed = info.task("Info")["result"]["services"]
    assert [s["job_id"] for s in listed] == [result["job_id"]] and listed[0]["ready"] is True
    assert listed[0]["platform_status"]["lepton_state"] == "Ready"

    stop = lep.play(stop_task(name), env=lep.lepton_env)
    assert stop.task("Stop")["status"] == "changed" and stop.task("Stop")["result"]["stopped"] == [result["job_id"]]
    assert containers(name) == []
    assert_nothing_left(lep)
    assert lep.play(stop_task(name), env=lep.lepton_env).task("Stop")["status"] == "ok"


class ArgvWatch(object):
    """Reads the argv of every process on this machine while a playbook runs; records the canary's."""

    def __init__(self, values):
        self.values = [v.encode() for v in values]
        self.leaks = []
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _loop(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open("/proc/%s/cmdline" % pid, "rb") as handle:
                            argv = handle.read()
                    except OSError:
                        continue
                    self.seen += 1
                    if any(v in argv for v in self.values):
                        self.leaks.append((pid, argv[:200]))
            time.sleep(0.02)


def test_the_secret_reaches_the_container_through_a_lepton_secret_only(lep):
    name = "lep-secret-%s" % RUN
    token = lep.lepton_env["LEPTON_WORKSPACE_TOKEN"]
    env = dict(lep.lepton_env, HF_TOKEN=CANARY)
    with ArgvWatch([CANARY, token]) as watch:
        run = lep.play(start_task(name, extra="secret_env: [HF_TOKEN]") + ASK % (name, DEMO),
                       args=["-vvvv", "--diff"], env=env)
        assert run.rc == 0, run.output[-3000:]
        job_id = run.task("Start")["result"]["job_id"]
        lep.job_ids.add(job_id)
        url = run.task("Start")["result"]["host_url"]
        status = httpx.get(url + "/api/v1/status", headers={"Authorization": "Bearer " + token}, timeout=10).json()
        assert status["hf_token_set"] is True
        [cid] = containers(name)
        environment = json.loads(docker("inspect", cid).stdout)[0]["Config"]["Env"]
        assert "HF_TOKEN=" + CANARY in environment  # the one place it must be: the container's environment
        deployment = lep.workspace.get("/deployments/" + name)
        events = lep.workspace.get("/deployments/%s/events" % name)
        secrets = lep.workspace.get("/usersecrets")
        journal = lep.workspace.journal()
        stop = lep.play(stop_task(name), args=["-vvvv", "--diff"], env=env)
    assert watch.seen > 100 and watch.leaks == []
    env_ref = {"name": "HF_TOKEN", "value_from": {"secret_name_ref": "tao-%s-HF_TOKEN" % job_id.replace("-", "")}}
    assert env_ref in deployment["spec"]["envs"]
    [made] = [s for s in secrets if s["name"] == env_ref["value_from"]["secret_name_ref"]]
    assert made["visibility"] == "private" and "tao.inference" in made["tags"]
    for where, text in (("output", run.output + stop.output), ("results", json.dumps(run.records + stop.records)),
                        ("registry", json.dumps(lep.registry_data())), ("deployment", json.dumps(deployment)),
                        ("events", json.dumps(events)), ("secret list", json.dumps(secrets)),
                        ("journal", json.dumps(journal))):
        assert CANARY not in text, where
        assert token not in text, where
    with open(SERVER_LOG) as handle:
        assert CANARY not in handle.read()
    [posted] = [j for j in journal if j["kind"] == "api" and j["path"].endswith("/usersecrets") and j["method"] == "POST"
                and any(s["name"] == env_ref["value_from"]["secret_name_ref"] for s in j["body"])]
    assert posted["body"][0]["value"].startswith("<redacted: %d characters" % len(CANARY))
    assert stop.task("Stop")["status"] == "changed"
    assert_nothing_left(lep)


def test_a_wrong_or_read_only_token_fails_clearly_and_makes_nothing(lep):
    name = "lep-auth-%s" % RUN
    wrong = lep.play(start_task(name, extra="secret_env: [HF_TOKEN]"),
                     env=dict(lep.lepton_env, LEPTON_WORKSPACE_TOKEN="not-the-token", HF_TOKEN=CANARY))
    msg = wrong.task("Start")["result"]["msg"]
    assert wrong.rc != 0 and "Lepton refused the workspace token" in msg and "401" in msg, msg
    assert "not-the-token" not in wrong.output
    with open(VIEWER_TOKEN) as handle:
        viewer = handle.read().strip()
    read_only = lep.play(start_task(name, extra="secret_env: [HF_TOKEN]"),
                         env=dict(lep.lepton_env, LEPTON_WORKSPACE_TOKEN=viewer, HF_TOKEN=CANARY))
    msg = read_only.task("Start")["result"]["msg"]
    assert "may not create the secrets" in msg and "403" in msg, msg
    assert_nothing_left(lep)


def test_a_bad_node_group_or_shape_is_named_before_anything_is_made(lep):
    name = "lep-ng-%s" % RUN
    run = lep.play(start_task(name, extra="dedicated_node_group: no-such-group"), env=lep.lepton_env)
    msg = run.task("Start")["result"]["msg"]
    assert "dedicated_node_group no-such-group is not a node group of workspace" in msg and "tao-test-ng (ng-" in msg, msg
    shape = lep.play(start_task(name, shape="gpu.3xh100-sxm", gpus=3, extra="dedicated_node_group: tao-test-ng"),
                     env=lep.lepton_env)
    msg = shape.task("Start")["result"]["msg"]
    assert "resource_shape gpu.3xh100-sxm is not offered in node group tao-test-ng" in msg and "gpu.1xh100-sxm" in msg
    gpus = lep.play(start_task(name, shape="gpu.1xh100-sxm", gpus=0, extra="dedicated_node_group: tao-test-ng"),
                    env=lep.lepton_env)
    assert "gives 1 GPU(s) to each replica but num_gpus is 0" in gpus.task("Start")["result"]["msg"]
    nowhere = lep.lepton_env["LEPTON_WORKSPACE_URL"].rsplit("/", 1)[0] + "/nowhere"
    workspace = lep.play(start_task(name), env=dict(lep.lepton_env, LEPTON_WORKSPACE_ID="nowhere", LEPTON_WORKSPACE_URL=nowhere))
    assert "workspace nowhere was not found" in workspace.task("Start")["result"]["msg"]
    assert_nothing_left(lep)


def test_capacity_and_quota_refusals_end_the_start_at_once(lep):
    name = "lep-cap-%s" % RUN
    began = time.monotonic()
    run = lep.play(start_task(name, shape="gpu.4xh100-sxm", gpus=4, extra="dedicated_node_group: tao-test-ng\n"
                                                                          "secret_env: [HF_TOKEN]"),
                   env=dict(lep.lepton_env, HF_TOKEN=CANARY))
    msg = run.task("Start")["result"]["msg"]
    assert time.monotonic() - began < 30
    assert "cannot run: NoCapacity" in msg and "Insufficient nvidia.com/gpu" in msg, msg
    assert "Recent events:" in msg and "FailedScheduling" in msg and "stopped and removed" in msg
    replicas = int(quota_gpus(lep) // 8) + 1  # one replica more than the quota holds
    quota = lep.play(start_task(name, shape="gpu.8xh100-sxm", gpus=8, extra="dedicated_node_group: tao-test-ng\n"
                                "lepton_replicas: %d" % replicas), env=lep.lepton_env)
    msg = quota.task("Start")["result"]["msg"]
    assert "the quota of workspace" in msg and "is used up" in msg and "QuotaExceeded" in msg, msg
    assert_nothing_left(lep)


def test_a_model_that_fails_to_load_or_an_image_that_is_missing_fail_with_the_reason(lep):
    name = "lep-fail-%s" % RUN
    run = lep.play(start_task(name, extra='env:\n  TAO_EMULATOR_LOAD_FAIL: "CUDA out of memory in shard 3"'),
                   env=lep.lepton_env)
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and "model_load_failed" in msg and "CUDA out of memory in shard 3" in msg, msg
    assert_nothing_left(lep)
    missing = lep.play(start_task(name, image="tao-inference-missing:never"), env=lep.lepton_env)
    msg = missing.task("Start")["result"]["msg"]
    assert "cannot run: ConfigError" in msg and "ErrImagePull" in msg and "tao-inference-missing:never" in msg, msg
    assert_nothing_left(lep)


def test_a_name_taken_by_another_deployment_is_refused_and_left_alone(lep):
    name = "lep-taken-%s" % RUN
    body = {"metadata": {"id": name, "name": name}, "spec": {
        "container": {"image": IMAGE, "command": ["/bin/sh", "-c", "sleep 600"]},
        "resource_requirement": {"resource_shape": "cpu.small", "min_replicas": 1, "max_replicas": 1}}}
    response = lep.workspace.http.post(lep.workspace.url + "/deployments", json=body)
    assert response.status_code == 200, response.text
    try:
        run = lep.play(start_task(name), env=lep.lepton_env)
        msg = run.task("Start")["result"]["msg"]
        assert "a deployment named %s already exists" % name in msg and "not made by tao.inference" in msg, msg
        assert lep.workspace.get("/deployments/" + name)["metadata"]["id"] == name
        assert lep.entries() == {}
    finally:
        lep.workspace.delete(name)
        wait_for(lambda: lep.workspace.http.get(lep.workspace.url + "/deployments/" + name).status_code == 404, 30)


def test_absent_by_name_finds_the_deployment_without_the_registry(lep):
    name = "lep-lost-%s" % RUN
    run = lep.play(start_task(name, extra="wait: false\nsecret_env: [HF_TOKEN]"), env=dict(lep.lepton_env, HF_TOKEN=CANARY))
    assert run.rc == 0, run.output[-2000:]
    lep.job_ids.add(run.task("Start")["result"]["job_id"])
    os.unlink(lep.registry)
    stop = lep.play(stop_task(name), env=lep.lepton_env)
    assert stop.task("Stop")["status"] == "changed", stop.output[-2000:]
    assert_nothing_left(lep)


class Recorder(BaseHTTPRequestHandler):
    """Records the headers of whatever reaches it."""

    seen = []

    def do_POST(self):  # noqa: N802
        Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def recording():
    """A loopback server that records whatever reaches it (Recorder.seen); yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def stop_and_check(lep, name, env):
    stop = lep.play(stop_task(name), env=env)
    assert stop.task("Stop")["status"] == "changed", stop.output[-2000:]
    assert_nothing_left(lep)


def test_the_endpoint_token_goes_only_where_the_registry_binding_holds(lep):
    name = "lep-token-%s" % RUN
    token = "endpoint-" + uuid.uuid4().hex
    env = dict(lep.lepton_env, LEPTON_ENDPOINT_TOKEN=token)
    run = lep.play(start_task(name, extra="lepton_endpoint_auth: endpoint_token") + ASK % (name, DEMO), env=env)
    assert run.rc == 0, run.output[-3000:]
    service = run.task("Start")["result"]
    lep.job_ids.add(service["job_id"])
    assert service["endpoint_auth"]["source"] == "LEPTON_ENDPOINT_TOKEN" and run.task("Ask")["result"]["content"]
    assert token not in run.output and token not in json.dumps(lep.registry_data())
    assert lep.workspace.get("/deployments/" + name)["spec"]["api_tokens"] == [{"value": "***"}]
    assert httpx.get(service["host_url"] + "/api/v1/health/readiness", timeout=10).status_code == 401

    without = lep.play(ASK % (name, DEMO), env=dict(lep.lepton_env, LEPTON_ENDPOINT_TOKEN=""))
    assert "export LEPTON_ENDPOINT_TOKEN" in without.task("Ask")["result"]["msg"]
    other = lep.play(ASK % (name, DEMO), env=dict(env, LEPTON_ENDPOINT_TOKEN="another-token"))
    assert "is not the one service" in other.task("Ask")["result"]["msg"]

    # A registry entry pointed at another address (planted, or edited) gets no token: nothing is sent there.
    with recording() as elsewhere:
        data = lep.registry_data()
        data[service["job_id"]]["host_url"] = elsewhere
        with open(lep.registry, "w") as handle:
            json.dump(data, handle)
        planted = lep.play(ASK % (name, DEMO), env=env)
        assert "is not the one service %s was started with" % service["job_id"] in planted.task("Ask")["result"]["msg"]
        info = lep.play("- name: Info\n  tao.inference.tao_inference_info:\n", env=env)
        assert info.task("Info")["result"]["services"][0]["readiness"]["reason"] == "unauthenticated"
        assert Recorder.seen == []
    stop_and_check(lep, name, env)


FLEET_ASK = """\
- name: Info
  tao.inference.tao_inference_info:
  register: info

- name: View
  tao.inference.tao_inference_fleet:
    hosts:
      - inventory_host: localhost
        services: "{{ info.services }}"
        connection: {ansible_connection: local}
  register: view

- name: Ask through the view
  tao.inference.tao_inference_request:
    fleet: "{{ view.services }}"
    name: %s
    prompt: What is in the picture?
    media: [%s]
    sampling: {}
  register: answer
  failed_when: false

- name: Spread through the view
  tao.inference.tao_inference_request:
    fleet: "{{ view.services }}"
    network_arch: cosmos-rl
    spread: true
    requests: [{prompt: one, media: [%s]}, {prompt: two, media: [%s]}]
    sampling: {}
  register: spread
  failed_when: false
"""


def test_a_fleets_lepton_service_gets_its_token_only_where_its_binding_holds(lep):
    name = "lep-fleet-%s" % RUN
    token = "endpoint-" + uuid.uuid4().hex
    env = dict(lep.lepton_env, LEPTON_ENDPOINT_TOKEN=token)
    run = lep.play(start_task(name, extra="lepton_endpoint_auth: endpoint_token"), env=env)
    assert run.rc == 0, run.output[-3000:]
    service = run.task("Start")["result"]
    lep.job_ids.add(service["job_id"])
    ask = FLEET_ASK % (name, DEMO, DEMO, DEMO)

    routed = lep.play(ask, env=env)
    row = next(r for r in routed.task("View")["result"]["services"] if r["job_id"] == service["job_id"])
    assert row["endpoint_auth"] == service["endpoint_auth"] and row["controller_url"] == service["host_url"]
    assert row["forwarded"] is False
    answer = routed.task("Ask through the view")["result"]
    assert answer.get("content") and answer["controller_url"] == service["host_url"], routed.output[-3000:]
    spread = routed.task("Spread through the view")["result"]
    assert spread["summary"]["ok"] == 2, routed.output[-3000:]
    assert token not in routed.output

    # The same view asked without the token, or with another one: nothing reaches the endpoint.
    def reached():
        return [e for e in lep.workspace.journal() if e.get("kind") == "ingress" and e.get("deployment") == name]

    view = json.dumps(routed.task("View")["result"]["services"])
    asks_only = ask.split("- name: Ask through the view")[1].replace('"{{ view.services }}"', view)
    before = reached()
    for other, why in (("", "export LEPTON_ENDPOINT_TOKEN"), ("another-token", "is not the one service")):
        refused = lep.play("- name: Ask through the view" + asks_only, env=dict(env, LEPTON_ENDPOINT_TOKEN=other))
        for task in ("Ask through the view", "Spread through the view"):
            assert why in refused.task(task)["result"]["msg"], refused.output[-3000:]
    assert reached() == before

    # A view whose row was pointed elsewhere (a forged fact) sends the token nowhere.
    with recording() as elsewhere:
        forged_ask = """\
- name: Ask a forged view
  tao.inference.tao_inference_request:
    fleet:
      - {row}
    name: %s
    prompt: hi
    media: [%s]
    sampling: {}
  register: answer
  failed_when: false
""" % (name, DEMO)
        forged = lep.play(forged_ask.replace("{row}", json.dumps(dict(row, controller_url=elsewhere, host_url=elsewhere))),
                          env=env)
        assert "is not the one service" in forged.task("Ask a forged view")["result"]["msg"], forged.output[-2000:]
        # Only the controller URL pointed elsewhere (as if through a forward): no token leaves either.
        forwarded = lep.play(forged_ask.replace("{row}", json.dumps(dict(row, controller_url=elsewhere))), env=env)
        assert "the token goes only to the URL it is bound to" in forwarded.task(
            "Ask a forged view")["result"]["msg"], forwarded.output[-2000:]
        assert Recorder.seen == []
    stop_and_check(lep, name, env)


def test_an_endpoint_open_to_anyone_needs_no_token(lep):
    name = "lep-open-%s" % RUN
    run = lep.play(start_task(name, extra="lepton_endpoint_auth: none"), env=lep.lepton_env)
    assert run.rc == 0, run.output[-3000:]
    service = run.task("Start")["result"]
    lep.job_ids.add(service["job_id"])
    assert "endpoint_auth" not in service
    assert httpx.get(service["host_url"] + "/api/v1/health/readiness", timeout=10).status_code == 200
    ask = lep.play(ASK % (name, DEMO), env={"LEPTON_WORKSPACE_TOKEN": ""})
    assert ask.task("Ask")["result"]["content"], ask.output[-2000:]
    lep.play(stop_task(name), env=lep.lepton_env)
    assert_nothing_left(lep)


def test_the_start_and_stop_playbooks_and_the_preflight_role(lep):
    name = "lep-play-%s" % RUN
    options = {"resource_shape": "cpu.small", "lepton_replicas": 1}
    run = lep.playbook(os.path.join(ROOT, "playbooks", "start.yml"), {
        "tao_platform": "lepton", "tao_platform_options": options, "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://a/b",
        "tao_image": IMAGE, "tao_num_gpus": 0, "tao_name": name}, env=lep.lepton_env)
    assert run.rc == 0, run.output[-3000:]
    job_id = run.task("Start the service")["result"]["job_id"]
    lep.job_ids.add(job_id)
    assert "%s: ready after" % job_id in run.stdout
    role = lep.play("- name: Preflight role\n  ansible.builtin.include_role:\n    name: tao.inference.lepton\n"
                    "  vars:\n    lepton_resource_shape: gpu.2xh100-sxm\n    lepton_dedicated_node_group: tao-test-ng\n"
                    "    lepton_num_gpus: 2\n    lepton_image: %s\n" % IMAGE, env=lep.lepton_env)
    assert role.rc == 0, role.output[-3000:]
    assert "node group tao-test-ng (ng-" in role.stdout and "free GPUs per node [2]" in role.stdout
    replicas = int(quota_gpus(lep) // 2) + 1
    too_big = lep.play("- name: Preflight role\n  ansible.builtin.include_role:\n    name: tao.inference.lepton\n"
                       "  vars:\n    lepton_resource_shape: gpu.2xh100-sxm\n    lepton_dedicated_node_group: tao-test-ng\n"
                       "    lepton_num_gpus: 2\n    lepton_replicas: %d\n    lepton_image: %s\n" % (replicas, IMAGE),
                       env=lep.lepton_env)
    assert too_big.rc != 0 and "quota of workspace" in too_big.output
    assert "too small for %d replica(s)" % replicas in too_big.output
    stop = lep.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), {
        "tao_name": name, "tao_platform": "lepton", "tao_platform_options": options}, env=lep.lepton_env)
    assert stop.rc == 0, stop.output[-3000:]
    assert_nothing_left(lep)


def test_check_mode_predicts_and_makes_nothing(lep):
    name = "lep-check-%s" % RUN
    run = lep.play(start_task(name, extra="secret_env: [HF_TOKEN]"), args=["--check", "--diff"],
                   env=dict(lep.lepton_env, HF_TOKEN=CANARY))
    assert run.rc == 0 and run.task("Start")["status"] == "changed", run.output[-2000:]
    assert CANARY not in run.output
    assert [d for d in lep.workspace.get("/deployments") if d["metadata"]["name"] == name] == []
    assert_nothing_left(lep)


def own_module_pids(root):
    """Pids of the tao_inference_service module processes that descend from ``root`` (this test's run only:
    others may be running their own)."""
    parents, modules = {}, []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % pid) as handle:
                parents[int(pid)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if b"AnsiballZ_tao_inference_service" in handle.read():
                    modules.append(int(pid))
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid):
        seen = set()
        while pid and pid not in seen:
            if pid == root:
                return True
            seen.add(pid)
            pid = parents.get(pid)
        return False

    return [pid for pid in modules if descends(pid)]


def test_an_interrupted_start_removes_the_deployment_and_its_secrets(lep):
    name = "lep-int-%s" % RUN
    task = start_task(name, extra='secret_env: [HF_TOKEN]\nenv:\n  TAO_EMULATOR_LOAD_SECONDS: "60"')
    proc = lep.spawn(task, env=dict(lep.lepton_env, HF_TOKEN=CANARY))
    try:
        assert wait_for(lambda: any(d["metadata"]["name"] == name and d["status"]["state"] == "Ready"
                                    for d in lep.workspace.get("/deployments")), 60, 0.1), "the start never got going"
        for entry in lep.entries().values():
            lep.job_ids.add(entry["job_id"])
        pids = own_module_pids(proc.pid)
        assert pids
        began = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        run = lep.finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    msg = run.task("Start")["result"]["msg"]
    assert "interrupted (SIGTERM)" in msg and "nothing of it is left" in msg, msg
    assert time.monotonic() - began < 30
    assert_nothing_left(lep)
