"""The Lepton driver: the deployment and secret bodies pinned, its options, how it reads and maps the API's
answers (through an in-process fake of the API), and the endpoint token's binding to the service's URL."""

import json
import time

import httpx
import pytest

from ansible_collections.tao.inference.plugins.module_utils import readiness, registry, service
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms import lepton
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import LABEL_PREFIX, Launch
from ansible_collections.tao.inference.plugins.module_utils.platforms.lepton import LeptonDriver

from .helpers import JOB_ID, make_spec

CANARY = "canary-5d1e-secret-value"
TOKEN = "ws-token-0123456789abcdef"
ENDPOINT_TOKEN = "ep-token-fedcba9876543210"
URL = "https://gateway.dgxc-lepton.nvidia.com/api/v2/workspaces/ws1"
HEX = JOB_ID.replace("-", "")
REGISTRY = "/home/u/.local/state/tao-inference/registry.json"
NG_ID = "ng-0123456789"


def lepton_spec(**params):
    base = dict(platform="lepton", name="svc", num_gpus=1, resource_shape="gpu.1xh100-sxm", secret_env=["HF_TOKEN"],
                env={"LOG_LEVEL": "debug"}, shm_size="16g")
    base.update(params)
    return make_spec(environ={"HF_TOKEN": CANARY, "LEPTON_ENDPOINT_TOKEN": ENDPOINT_TOKEN}, **base)


def launch_of(spec, secrets=None, timeout=30):
    labels = {LABEL_PREFIX + "registry": REGISTRY, LABEL_PREFIX + "fingerprint": "ab" * 8,
              LABEL_PREFIX + "host": "ctl-1"}
    submitted = []
    launch = Launch(spec, JOB_ID, "umask 0 && server --port 8080", {"TAO_API_JOB_ID": JOB_ID},
                    {"HF_TOKEN": CANARY} if secrets is None else secrets, None, labels, timeout=timeout,
                    on_submitted=submitted.append)
    launch.submitted = submitted
    return launch


def driver(endpoint_token=None):
    return LeptonDriver("ws1", URL, TOKEN, endpoint_token=endpoint_token)


LABELS = {"tao.inference/managed-by": "tao.inference", "tao.inference/job-id": JOB_ID,
          "tao.inference/network-arch": "cosmos-rl", "tao.inference/fingerprint": "abababababababab",
          "tao.inference/name": "svc", "tao.inference/host": "ctl-1",
          # the registry path, base32 (a label value holds no '/'), in chunks of 63
          "tao.inference/registry-0": "f5ug63lff52s6ltmn5rwc3bpon2gc5dff52gc3znnfxgmzlsmvxggzjpojswo2l",
          "tao.inference/registry-1": "torzhsltkonxw4"}


def test_the_deployment_is_pinned():
    spec = lepton_spec(dedicated_node_group="h100-group", lepton_image_pull_secret="ngc-registry",
                       lepton_mounts=["/shared/models:/models:node-nfs:lepton-shared-fs"],
                       lepton_ip_allowlist=["10.1.2.3", "192.168.0.0/16"], lepton_replicas=2)
    body = driver().deployment_body(launch_of(spec), NG_ID)
    assert body == {
        "metadata": {"id": "svc", "name": "svc", "labels": LABELS},
        "spec": {
            "container": {"image": spec.image, "command": ["/bin/bash", "-c", "umask 0 && server --port 8080"],
                          "ports": [{"container_port": 8080, "protocol": "TCP"}]},
            "resource_requirement": {"resource_shape": "gpu.1xh100-sxm", "min_replicas": 2, "max_replicas": 2,
                                     "shared_memory_size": 16384,
                                     "affinity": {"allowed_dedicated_node_groups": [NG_ID]}},
            "envs": [{"name": "TAO_API_JOB_ID", "value": JOB_ID},
                     {"name": "HF_TOKEN", "value_from": {"secret_name_ref": "tao-%s-HF_TOKEN" % HEX}}],
            "health": {"liveness": {"initial_delay_seconds": 600, "tcp": {"port": 8080}}},
            "api_tokens": [{"value_from": {"token_name_ref": "WORKSPACE_TOKEN"}}],
            "auth_config": {"lepton_workspace_token_auth": {"remove_authorization_header": True},
                            "ip_allowlist": ["10.1.2.3/32", "192.168.0.0/16"]},
            "image_pull_secrets": ["ngc-registry"],
            "mounts": [{"path": "/shared/models", "mount_path": "/models", "from": "node-nfs:lepton-shared-fs"}],
        },
    }
    assert CANARY not in json.dumps(body) and TOKEN not in json.dumps(body)


def test_an_endpoint_token_of_its_own_and_no_token_at_all():
    spec = lepton_spec(lepton_endpoint_auth="endpoint_token", num_gpus=0, resource_shape="cpu.small")
    body = driver(ENDPOINT_TOKEN).deployment_body(launch_of(spec, secrets={}))
    assert body["spec"]["api_tokens"] == [{"value": ENDPOINT_TOKEN}]
    assert body["spec"]["auth_config"] == {"lepton_workspace_token_auth": {"remove_authorization_header": True}}
    assert "affinity" not in body["spec"]["resource_requirement"]
    assert body["spec"]["envs"] == [{"name": "TAO_API_JOB_ID", "value": JOB_ID}]
    public = driver().deployment_body(launch_of(lepton_spec(lepton_endpoint_auth="none"), secrets={}))
    assert public["spec"]["api_tokens"] == [] and public["spec"]["allow_unauthenticated_access"] is True
    assert "auth_config" not in public["spec"]


def test_the_secrets_hold_the_values_and_are_marked():
    items = driver().secret_items(launch_of(lepton_spec()))
    assert items == [{"name": "tao-%s-HF_TOKEN" % HEX, "value": CANARY, "visibility": "private",
                      "tags": ["tao.inference", "tao.inference.job_id=%s" % JOB_ID]}]


@pytest.mark.parametrize("name, expected", [
    ("svc", "svc"), ("Reason_Eval.v2", "reason-eval-v2"), ("7b-model", "tao-7b-model"),
    ("a" * 63, "a" * 36), ("x" * 34 + "-_y", "x" * 34), (None, "tao-" + HEX),
])
def test_deployment_names_are_lepton_names(name, expected):
    spec = lepton_spec(name=name)
    got = lepton.deployment_name(spec, JOB_ID)
    assert got == expected and lepton._NAME.fullmatch(got) and len(got) <= 36


def test_labels_carry_what_the_service_layer_reads_back():
    long_registry = "/srv/" + "deep/" * 70 + "registry.json"
    launch = launch_of(lepton_spec(name="My_Service."))
    launch.labels[LABEL_PREFIX + "registry"] = REGISTRY
    labels = LeptonDriver.labels(launch)
    assert labels["tao.inference/name-b32"] and "tao.inference/name" not in labels
    back = LeptonDriver._labels_of({"metadata": {"id": "my-service", "labels": labels}})
    assert back[LABEL_PREFIX + "name"] == "My_Service." and back[LABEL_PREFIX + "registry"] == REGISTRY
    assert back[LABEL_PREFIX + "job_id"] == JOB_ID and back["platform_job_id"] == "my-service"
    assert back[LABEL_PREFIX + "host"] == "ctl-1"
    launch.labels[LABEL_PREFIX + "registry"] = long_registry
    hashed = LeptonDriver._labels_of({"metadata": {"labels": LeptonDriver.labels(launch)}})
    assert hashed[LABEL_PREFIX + "registry"].startswith("sha256:")  # never equal to a path: never adopted
    for key, value in labels.items():
        assert lepton._LABEL_VALUE.fullmatch(value) and len(value) <= 63, (key, value)


@pytest.mark.parametrize("params, message", [
    ({"resource_shape": "GPU 1x"}, "resource_shape"),
    ({"dedicated_node_group": "-ng"}, "dedicated_node_group"),
    ({"lepton_replicas": 0}, "lepton_replicas"),
    ({"lepton_replicas": 65}, "lepton_replicas"),
    ({"lepton_initial_delay_seconds": -1}, "lepton_initial_delay_seconds"),
    ({"lepton_image_pull_secret": "NGC secret"}, "lepton_image_pull_secret"),
    ({"lepton_mounts": ["/a:/b"]}, "lepton_mounts"),
    ({"lepton_mounts": ["relative:/b:node-local"]}, "lepton_mounts"),
    ({"lepton_mounts": ["/a:/b:s3://bucket"]}, "lepton_mounts"),
    ({"lepton_mounts": ["/a\n:/b:node-local"]}, "lepton_mounts"),
    ({"lepton_mounts": ["/shared/../etc:/models:node-local"]}, "lepton_mounts"),
    ({"lepton_mounts": ["/shared/models:/models/..:node-local"]}, "lepton_mounts"),
    ({"lepton_ip_allowlist": ["10.0.0.0/33"]}, "lepton_ip_allowlist"),
    ({"volumes": ["/data:/data"]}, "lepton_mounts"),
    ({"host_port": 8081}, "host_port does not apply"),
    ({"env": {"LEPTON_DEPLOYMENT_NAME": "x"}}, "set by Lepton itself"),
    ({"partition": "gpu"}, "partition is an option of platform slurm, not of lepton"),
])
def test_bad_lepton_options_are_refused(params, message):
    with pytest.raises(TaoInferenceError) as err:
        lepton_spec(**params)
    assert message in err.value.msg


def test_an_endpoint_token_mode_needs_the_token():
    with pytest.raises(TaoInferenceError) as err:
        make_spec(environ={}, platform="lepton", num_gpus=0, resource_shape="cpu.small",
                  lepton_endpoint_auth="endpoint_token")
    assert "export LEPTON_ENDPOINT_TOKEN" in err.value.msg


def test_the_workspace_comes_from_options_or_the_environment(monkeypatch):
    for name in ("LEPTON_WORKSPACE_ID", "LEPTON_WORKSPACE_URL", "LEPTON_WORKSPACE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TaoInferenceError) as err:
        LeptonDriver.from_options({}, {})
    assert "export LEPTON_WORKSPACE_ID" in err.value.msg
    monkeypatch.setenv("LEPTON_WORKSPACE_ID", "ws1")
    monkeypatch.setenv("LEPTON_WORKSPACE_TOKEN", TOKEN)
    default = LeptonDriver.from_options({}, {})
    assert (default.workspace, default.url, default.token) == ("ws1", URL, TOKEN)
    given = LeptonDriver.from_options({"workspace_id": "ws2", "workspace_url": "http://127.0.0.1:7700/api/v2/workspaces/ws2/"},
                                      {"lepton_workspace_token": "other"})
    assert (given.workspace, given.url, given.token) == ("ws2", "http://127.0.0.1:7700/api/v2/workspaces/ws2", "other")


@pytest.mark.parametrize("connection, message", [
    ({"workspace_id": "WS 1"}, "not a Lepton workspace id"),
    ({"workspace_id": "ws1", "workspace_url": "http://gateway.example.com/api/v2/workspaces/ws1"}, "in clear"),
    ({"workspace_id": "ws1", "workspace_url": "https://user:pw@gateway.example.com/x"}, "is not an http(s)"),
    ({"workspace_id": "ws1", "workspace_url": "https://gateway.example.com/api/v2/workspaces/ws9"}, "names workspace ws9"),
])
def test_bad_workspaces_are_refused(connection, message):
    with pytest.raises(TaoInferenceError) as err:
        LeptonDriver.from_options(connection, {})
    assert message in err.value.msg


def test_a_credential_string_in_the_workspace_id_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("LEPTON_WORKSPACE_ID", "ws1:" + TOKEN)
    with pytest.raises(TaoInferenceError) as err:
        LeptonDriver.from_options({}, {})
    assert "a credential string <id>:<token>" in err.value.msg and TOKEN not in err.value.msg


def test_exported_lepton_variables_are_no_options_of_another_platform(monkeypatch):
    monkeypatch.setenv("LEPTON_WORKSPACE_ID", "ws1")
    monkeypatch.setenv("LEPTON_WORKSPACE_TOKEN", TOKEN)
    assert make_spec(platform="local-docker").platform == "local-docker"


def test_nothing_is_recorded_as_a_connection():
    assert driver().recorded_connection({"workspace_id": "ws1", "workspace_url": URL}) == \
        {"workspace_id": None, "workspace_url": None}


def test_a_planted_connection_cannot_choose_where_the_token_goes():
    planted = {"job_id": JOB_ID, "connection": {"workspace_id": "ws1", "workspace_url": "https://evil.example/x"}}
    with pytest.raises(TaoInferenceError) as err:
        service.trusted_connection(planted, LeptonDriver, {"lepton_workspace_id": "ws1", "lepton_workspace_url": None})
    assert "pass the same lepton_workspace_url" in err.value.msg


# -- the endpoint token's binding -------------------------------------------------------------
def entry(url="https://svc-ws1.lepton.example", source="LEPTON_WORKSPACE_TOKEN", token=TOKEN, platform="lepton"):
    return {"job_id": JOB_ID, "platform": platform, "host_url": url,
            "endpoint_auth": readiness.endpoint_auth(JOB_ID, url, source, token)}


def test_the_token_goes_where_the_binding_says():
    assert readiness.endpoint_headers(entry(), {"LEPTON_WORKSPACE_TOKEN": TOKEN}) == {"Authorization": "Bearer " + TOKEN}
    assert readiness.endpoint_headers(entry(), {}, {"lepton_workspace_token": TOKEN}) == \
        {"Authorization": "Bearer " + TOKEN}
    assert readiness.endpoint_headers({"job_id": JOB_ID, "host_url": "http://x:1"}, {}) == {}
    assert TOKEN not in json.dumps(entry())


@pytest.mark.parametrize("change, environ, message", [
    (lambda e: e.update(host_url="https://evil.example"), {"LEPTON_WORKSPACE_TOKEN": TOKEN}, "not the one service"),
    (lambda e: None, {"LEPTON_WORKSPACE_TOKEN": "another-token"}, "not the one service"),
    (lambda e: None, {"LEPTON_WORKSPACE_TOKEN": "another-token"}, "registry entry may have been planted or edited"),
    (lambda e: None, {}, "export LEPTON_WORKSPACE_TOKEN"),
    (lambda e: e["endpoint_auth"].update(source="AWS_SECRET_ACCESS_KEY"), {"AWS_SECRET_ACCESS_KEY": "x"},
     "never gives an endpoint"),
    (lambda e: e.update(platform="local-docker"), {"LEPTON_WORKSPACE_TOKEN": TOKEN}, "never gives an endpoint"),
    (lambda e: e["endpoint_auth"].update(binding="zz"), {"LEPTON_WORKSPACE_TOKEN": TOKEN}, "binding is not"),
])
def test_a_token_is_never_sent_where_the_binding_does_not_hold(change, environ, message):
    planted = entry()
    change(planted)
    with pytest.raises(TaoInferenceError) as err:
        readiness.endpoint_headers(planted, environ)
    assert message in err.value.msg and TOKEN not in err.value.msg


def test_a_token_never_crosses_the_network_in_clear():
    bound = entry(url="http://10.0.0.5:8080")
    with pytest.raises(TaoInferenceError) as err:
        readiness.endpoint_headers(bound, {"LEPTON_WORKSPACE_TOKEN": TOKEN})
    assert "in clear" in err.value.msg
    assert readiness.endpoint_headers(entry(url="http://127.0.0.1:34567"), {"LEPTON_WORKSPACE_TOKEN": TOKEN})


def test_the_registry_checks_the_lepton_fields_it_reads_back():
    good = {"job_id": JOB_ID, "platform": "lepton", "network_arch": "cosmos-rl", "host_url": "https://svc.example",
            "status": "started", "lepton_deployment": "svc", "lepton_workspace": "ws1", "lepton_api": URL,
            "endpoint_auth": readiness.endpoint_auth(JOB_ID, "https://svc.example", "LEPTON_WORKSPACE_TOKEN", TOKEN),
            "connection": {"workspace_id": None, "workspace_url": None}}
    assert registry.entry_problem(JOB_ID, good) is None
    for field, value in (("lepton_deployment", "-x"), ("lepton_api", "http://evil.example/api"),
                         ("endpoint_auth", {"scheme": "basic", "source": "X", "binding": "0" * 64}),
                         ("connection", {"workspace_url": "http://evil.example/x"}),
                         ("connection", {"kubeconfig": "/tmp/x"})):
        bad = dict(good, **{field: value})
        assert registry.entry_problem(JOB_ID, bad), field


# -- the API, through a fake of it ----------------------------------------------------------------
class FakeLepton(object):
    """Routes and answers of a workspace; records every request."""

    def __init__(self):
        self.requests = []
        self.deployments = {}
        self.secrets = {}
        self.readiness = {}
        self.terminations = {}
        self.events = []
        self.answers = {}  # (method, path) -> [(status, body), ...] answered first
        self.ready_after = 2  # GETs of a deployment before it is Ready

    def handler(self, request):
        path = request.url.path[len("/api/v2/workspaces/ws1"):]
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, path, body, dict(request.headers)))
        queued = self.answers.get((request.method, path))
        if queued:
            status, answer = queued.pop(0)
            return httpx.Response(status, json=answer)
        if path == "/workspace":
            return httpx.Response(200, json={"workspace_name": "ws1", "workspace_state": "normal"})
        if path == "/dedicated-node-groups":
            return httpx.Response(200, json=[{"metadata": {"id": NG_ID, "name": "h100-group"}}])
        if path == "/shapes":
            return httpx.Response(200, json=[{"metadata": {"name": n}, "spec": {"name": n, "accelerator_num": g}}
                                             for n, g in (("cpu.small", 0), ("gpu.1xh100-sxm", 1))])
        if path == "/usersecrets":
            if request.method == "POST":
                self.secrets.update((s["name"], s) for s in body)
                return httpx.Response(200, json={})
            return httpx.Response(200, json=[dict((k, v) for k, v in s.items() if k != "value")
                                             for s in self.secrets.values()])
        if path.startswith("/usersecrets/") and request.method == "DELETE":
            self.secrets.pop(path.rsplit("/", 1)[1], None)
            return httpx.Response(200, json={})
        if path == "/deployments":
            if request.method == "POST":
                name = body["metadata"]["name"]
                if name in self.deployments:
                    return httpx.Response(409, json={"code": "DeploymentAlreadyExists", "message": "exists"})
                self.deployments[name] = dict(body, status={"state": "Starting", "gets": 0,
                                                            "endpoint": {"external_endpoint": "https://%s.lepton.example"
                                                                         % name, "internal_endpoint": "x"}})
                return httpx.Response(200, json=self.deployments[name])
            return httpx.Response(200, json=list(self.deployments.values()))
        parts = path.split("/")
        if parts[1] == "deployments":
            found = self.deployments.get(parts[2])
            if found is None:
                return httpx.Response(404, json={"code": "DeploymentNotFound", "message": "not found"})
            if len(parts) == 3 and request.method == "DELETE":
                del self.deployments[parts[2]]
                return httpx.Response(200, json={})
            if len(parts) == 3:
                found["status"]["gets"] = found["status"].get("gets", 0) + 1
                if found["status"]["gets"] > self.ready_after:
                    found["status"]["state"] = "Ready"
                return httpx.Response(200, json=found)
            if parts[3] == "readiness":
                return httpx.Response(200, json=self.readiness)
            if parts[3] == "termination":
                return httpx.Response(200, json=self.terminations)
            if parts[3] == "events":
                return httpx.Response(200, json=self.events)
            if parts[3] == "replicas" and len(parts) == 4:
                return httpx.Response(200, json=[{"id": "r1", "metadata": {"id": "r1"}}])
            if parts[3] == "replicas":
                return httpx.Response(200, text="loading\nCUDA out of memory (token %s)\n" % TOKEN)
        return httpx.Response(404, json={"code": "NotFound", "message": "no route"})


@pytest.fixture
def api():
    fake = FakeLepton()
    drv = LeptonDriver("ws1", URL, TOKEN)
    drv._http = httpx.Client(transport=httpx.MockTransport(fake.handler), headers={"Authorization": "Bearer " + TOKEN})
    fake.driver = drv
    return fake


def paths(fake, method=None):
    return [(m, p) for m, p, _b, _h in fake.requests if method is None or m == method]


def test_a_start_makes_the_secrets_then_the_deployment_and_binds_the_token(api):
    spec = lepton_spec(dedicated_node_group="h100-group")
    launch = launch_of(spec)
    api.driver.preflight(spec, report=False)
    fields = api.driver.start(launch)
    assert paths(api, "POST") == [("POST", "/usersecrets"), ("POST", "/deployments")]
    assert api.requests[-1][3]["authorization"] == "Bearer " + TOKEN
    posted = [b for m, p, b, _h in api.requests if (m, p) == ("POST", "/deployments")][0]
    assert posted["spec"]["resource_requirement"]["affinity"] == {"allowed_dedicated_node_groups": [NG_ID]}
    assert fields["host_url"] == "https://svc.lepton.example" and fields["platform_job_id"] == "svc"
    # Where it runs is recorded before anything is made, the server's id as soon as it has one.
    assert launch.submitted[0] == {"lepton_deployment": "svc", "lepton_workspace": "ws1", "lepton_api": URL}
    assert launch.submitted[1]["platform_job_id"] == "svc"
    entry_ = dict(fields, job_id=JOB_ID, platform="lepton")
    assert readiness.endpoint_headers(entry_, {"LEPTON_WORKSPACE_TOKEN": TOKEN}) == {"Authorization": "Bearer " + TOKEN}
    assert TOKEN not in json.dumps(fields) and CANARY not in json.dumps(fields)


@pytest.mark.parametrize("reason", ["NoCapacity", "ConfigError"])
def test_a_replica_that_cannot_run_fails_the_start_at_once_with_events_and_logs(api, reason):
    api.ready_after = 10 ** 6
    api.readiness = {"r1": [{"reason": reason, "message": "0/1 nodes: Insufficient nvidia.com/gpu",
                             "creationTimestamp": "2026-01-01T00:00:00Z"}]}
    api.events = [{"type": "Warning", "reason": "FailedScheduling", "note": "Insufficient nvidia.com/gpu", "count": 3,
                   "last_observed_time": "2026-01-01T00:00:01Z", "regarding": {"name": "r1"}}]
    began = time.monotonic()
    with pytest.raises(TaoInferenceError) as err:
        api.driver.start(launch_of(lepton_spec()))
    assert time.monotonic() - began < 5
    msg = err.value.msg
    assert "replica r1 of deployment svc cannot run: %s" % reason in msg
    assert "Recent events: Warning FailedScheduling: Insufficient nvidia.com/gpu (x3)" in msg
    assert "CUDA out of memory" in msg and TOKEN not in msg and "********" in msg


def test_a_replica_that_exits_fails_the_start(api):
    api.ready_after = 10 ** 6
    api.terminations = {"r1": [{"started_at": 1, "finished_at": 2, "exit_code": 2, "reason": "Error",
                                "message": "error: the following arguments are required: --job"}]}
    with pytest.raises(TaoInferenceError) as err:
        api.driver.start(launch_of(lepton_spec()))
    assert "replica r1 of deployment svc exited (exit code 2, Error): error: the following arguments" in err.value.msg


def test_a_deployment_never_ready_fails_at_the_deadline_with_its_state(api):
    api.ready_after = 10 ** 6
    api.readiness = {"r1": [{"reason": "InProgress", "message": "pulling", "creationTimestamp": "x"}]}
    with pytest.raises(TaoInferenceError) as err:
        api.driver.start(launch_of(lepton_spec(), timeout=0.3))
    assert "was not ready within wait_timeout (state Starting)" in err.value.msg
    assert "Replicas: r1 InProgress (pulling)" in err.value.msg


@pytest.mark.parametrize("status, body, expected", [
    (401, {"code": "Unauthorized", "message": "invalid token"}, "Lepton refused the workspace token"),
    (403, {"code": "Forbidden", "message": "this token may only read"}, "may not create deployment svc"),
    (403, {"code": "QuotaExceeded", "message": "accelerator_num quota exceeded"}, "quota of workspace ws1 is used up"),
    (404, {"code": "WorkspaceNotFound", "message": "workspace ws1 not found"}, "workspace ws1 was not found"),
    (400, {"code": "InvalidRequest", "message": "resource shape gpu.9x is not available"}, "Shapes offered: cpu.small"),
    (500, {"code": "InternalError", "message": "boom"}, "try again"),
])
def test_api_failures_become_clear_messages(api, status, body, expected):
    api.answers[("POST", "/deployments")] = [(status, dict(body, message=body["message"] + " " + TOKEN))]
    with pytest.raises(TaoInferenceError) as err:
        api.driver.start(launch_of(lepton_spec()))
    assert expected in err.value.msg and TOKEN not in err.value.msg


def test_a_name_taken_says_by_whom(api):
    api.deployments["svc"] = {"metadata": {"id": "svc", "name": "svc", "labels": {"team": "vision"}},
                              "status": {"state": "Ready"}}
    with pytest.raises(TaoInferenceError) as err:
        api.driver.start(launch_of(lepton_spec()))
    assert "a deployment named svc already exists in workspace ws1 (not made by tao.inference, Ready)" in err.value.msg
    other = dict(LABELS, **{"tao.inference/job-id": "11111111-2222-4333-8444-555555555555"})
    api.deployments["svc"] = {"metadata": {"id": "svc", "labels": other}, "status": {"state": "Deleting"}}
    with pytest.raises(TaoInferenceError) as err:
        api.driver.start(launch_of(lepton_spec()))
    assert "service 11111111-2222-4333-8444-555555555555 of tao.inference" in err.value.msg
    assert "being deleted" in err.value.msg


def test_reads_are_tried_again_when_the_gateway_blips(api):
    api.answers[("GET", "/workspace")] = [(503, {"message": "upstream"}), (502, {"message": "bad gateway"})]
    assert api.driver._request("GET", "/workspace", "read")["workspace_name"] == "ws1"
    api.answers[("POST", "/usersecrets")] = [(503, {"message": "upstream"})]
    with pytest.raises(TaoInferenceError):
        api.driver._request("POST", "/usersecrets", "create", body=[])
    assert paths(api).count(("POST", "/usersecrets")) == 1


def test_a_missing_deployment_counts_as_gone_only_when_the_workspace_answers(api):
    gone = {"job_id": JOB_ID, "lepton_deployment": "svc"}
    assert api.driver.status(gone).state == "missing"
    api.driver._workspace_checked = False
    api.answers[("GET", "/workspace")] = [(404, {"code": "NotFound", "message": "no such workspace"})] * 3
    with pytest.raises(TaoInferenceError) as err:
        api.driver.status(gone)
    assert "workspace ws1 was not found" in err.value.msg


def test_another_workspace_is_never_looked_at_or_stopped(api):
    elsewhere = {"job_id": JOB_ID, "lepton_deployment": "svc", "lepton_workspace": "ws2", "lepton_api": URL}
    for call in (api.driver.status, api.driver.stop, api.driver.logs):
        with pytest.raises(TaoInferenceError) as err:
            call(elsewhere)
        assert "runs in Lepton workspace ws2" in err.value.msg
    assert api.requests == []


def test_stop_deletes_only_what_is_ours_for_that_job_id(api):
    api.deployments["svc"] = {"metadata": {"id": "svc", "labels": dict(LABELS)}, "status": {"state": "Ready"}}
    other = "11111111-2222-4333-8444-555555555555"
    api.deployments["theirs"] = {"metadata": {"id": "theirs", "labels": dict(LABELS, **{"tao.inference/job-id": other})},
                                 "status": {"state": "Ready"}}
    api.deployments["plain"] = {"metadata": {"id": "plain"}, "status": {"state": "Ready"}}
    api.secrets = dict((n, {"name": n, "tags": t}) for n, t in (
        ("tao-%s-HF_TOKEN" % HEX, ["tao.inference"]), ("tao-%s-X" % HEX, ["someone-else"]),
        ("tao-%s-HF_TOKEN" % other.replace("-", ""), ["tao.inference"]), ("HF_TOKEN", None)))
    assert api.driver.stop({"job_id": JOB_ID, "platform_job_id": "svc", "lepton_deployment": "svc"}) is True
    assert sorted(api.deployments) == ["plain", "theirs"]
    assert sorted(api.secrets) == sorted(["tao-%s-X" % HEX, "tao-%s-HF_TOKEN" % other.replace("-", ""), "HF_TOKEN"])
    assert api.driver.stop({"job_id": JOB_ID, "lepton_deployment": "svc"}) is False


def test_stop_finds_the_deployment_by_its_label_when_the_entry_has_no_name(api):
    api.deployments["renamed"] = {"metadata": {"id": "renamed", "labels": dict(LABELS)}, "status": {"state": "Ready"}}
    assert api.driver.stop({"job_id": JOB_ID}) is True and api.deployments == {}


def test_find_reports_our_deployments_with_their_labels(api):
    api.deployments["svc"] = {"metadata": {"id": "svc", "labels": dict(LABELS)}, "status": {"state": "Ready"}}
    api.deployments["plain"] = {"metadata": {"id": "plain"}, "status": {"state": "Ready"}}
    found = api.driver.find("svc")
    assert [f.ident for f in found] == ["svc"]
    assert found[0].labels[LABEL_PREFIX + "registry"] == REGISTRY and api.driver.find("other") == []


@pytest.mark.parametrize("state, readiness_, terminations, expected", [
    ("Ready", {}, {}, "running"),
    ("Starting", {}, {}, "pending"),
    ("Deleting", {}, {}, "exited"),
    ("Not Ready", {"r1": [{"reason": "ConfigError", "message": "ErrImagePull"}]}, {}, "exited"),
    ("Not Ready", {}, {"r1": [{"exit_code": 1, "reason": "Error", "message": "boom"}]}, "exited"),
    ("Not Ready", {"r1": [{"reason": "InProgress", "message": ""}]}, {}, "pending"),
])
def test_status_maps_lepton_states(api, state, readiness_, terminations, expected):
    api.ready_after = 10 ** 6
    api.deployments["svc"] = {"metadata": {"id": "svc", "labels": dict(LABELS)}, "status": {"state": state, "gets": 0}}
    api.readiness, api.terminations = readiness_, terminations
    status = api.driver.status({"job_id": JOB_ID, "lepton_deployment": "svc"})
    assert status.state == expected and status.extra["lepton_state"] == state


def test_preflight_checks_the_node_group_the_shape_and_the_gpus(api):
    with pytest.raises(TaoInferenceError) as err:
        api.driver.preflight(lepton_spec(dedicated_node_group="nope"), report=False)
    assert "dedicated_node_group nope is not a node group of workspace ws1; node groups there: h100-group" in err.value.msg
    with pytest.raises(TaoInferenceError) as err:
        api.driver.preflight(lepton_spec(resource_shape="gpu.8xb200"), report=False)
    assert "resource_shape gpu.8xb200 is not offered in workspace ws1; shapes there: cpu.small, gpu.1xh100-sxm" in \
        err.value.msg
    with pytest.raises(TaoInferenceError) as err:
        api.driver.preflight(lepton_spec(resource_shape="cpu.small"), report=False)
    assert "gives 0 GPU(s) to each replica but num_gpus is 1" in err.value.msg
    with pytest.raises(TaoInferenceError) as err:
        api.driver.preflight(lepton_spec(resource_shape=None), report=False)
    assert "needs resource_shape" in err.value.msg and "gpu.1xh100-sxm" in err.value.msg
    assert api.driver.preflight(lepton_spec(), report=False)["resource_shapes"] == ["cpu.small", "gpu.1xh100-sxm"]


@pytest.mark.parametrize("option", ["lepton_workspace_token", "lepton_endpoint_token"])
@pytest.mark.parametrize("value, message", [
    ("SECRETTOKENabc123\n", "newline"),  # read from a file with its newline: it would end up, escaped, in an error
    ("q9", "shorter than 4 characters"),  # too short to be masked, and no Lepton token
])
def test_a_bad_token_is_refused_without_being_shown(option, value, message, monkeypatch):
    for name in ("LEPTON_WORKSPACE_TOKEN", "LEPTON_ENDPOINT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    params = {"lepton_workspace_token": "good-token", option: value}
    with pytest.raises(TaoInferenceError) as err:
        LeptonDriver.from_options({"workspace_id": "ws1"}, params)
    assert option in err.value.msg and message in err.value.msg and value.strip() not in err.value.msg


def test_an_empty_token_variable_counts_as_unset(monkeypatch):
    """``export LEPTON_ENDPOINT_TOKEN=`` is how a shell user clears it: not a token with a bad character."""
    monkeypatch.setenv("LEPTON_WORKSPACE_TOKEN", "good-token")
    monkeypatch.setenv("LEPTON_ENDPOINT_TOKEN", "")
    driver = LeptonDriver.from_options({"workspace_id": "ws1"}, {})
    assert driver.endpoint_token is None and driver.token == "good-token"
    monkeypatch.setenv("LEPTON_WORKSPACE_TOKEN", "")
    assert LeptonDriver.from_options({"workspace_id": "ws1"}, {}).token is None


def test_an_answer_larger_than_the_limit_is_refused_unread(api, monkeypatch):
    monkeypatch.setattr(lepton, "ANSWER_LIMIT", 1)
    with pytest.raises(TaoInferenceError) as err:
        api.driver._request("GET", "/deployments", "list deployments")
    assert "answered more than 1 bytes" in err.value.msg


def test_a_missing_token_names_an_option_only_to_a_module_that_has_it():
    """The service module takes lepton_workspace_token; tao_inference_request reads the environment only."""
    with pytest.raises(TaoInferenceError) as service:
        readiness.endpoint_headers(entry(), {}, {})
    assert "export LEPTON_WORKSPACE_TOKEN (or give lepton_workspace_token)" in service.value.msg
    with pytest.raises(TaoInferenceError) as request:
        readiness.endpoint_headers(entry(), {})
    assert "export LEPTON_WORKSPACE_TOKEN and run again" in request.value.msg
    assert "lepton_workspace_token" not in request.value.msg
