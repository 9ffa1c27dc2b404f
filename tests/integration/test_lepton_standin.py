"""The test Lepton workspace itself: scripts/ensure-lepton.sh and the stand-in API, over plain HTTP and through
the ``leptonai`` client in the stand-in's own virtualenv.

Checks what the Lepton driver relies on: authentication (401, a read-only token's 403, an unknown workspace's
404), bodies checked against leptonai's models with field paths (400), a name taken (409), the quota (403),
a deployment's replicas running the emulator image on the Docker engine with their readiness, terminations,
events and log, the endpoint's token, IP allowlist and header removal at the ingress, capacity and image
failures, secrets reaching a container without appearing in any listing, log or command line, deletes, and the
script's reuse and ``--down``. Like every integration test it is skipped (by conftest) only when there is no
Docker engine or image.
"""

import json
import os
import subprocess
import time
import uuid

import httpx
import pytest

from .conftest import IMAGE, ROOT, docker

SCRIPT = os.path.join(ROOT, "scripts", "ensure-lepton.sh")
DIR = os.path.join(ROOT, ".build", "lepton")
RUN = uuid.uuid4().hex[:6]
JOB = json.dumps({"job_id": "standin", "specs": {"model_path": "hf_model://a/b"}, "neural_network_name": "cosmos-rl"})
SERVER = ["/bin/bash", "-c", "umask 0 && cosmos-rl-inference-microservice --job '%s' --docker_env_vars '{}'" % JOB]
READY = "/api/v1/health/readiness"


def ensure(*args, env=None):
    return subprocess.run(["bash", SCRIPT] + list(args), capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, **(env or {})))


def wait_for(check, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError("timed out after %ss waiting for %s; last: %r" % (timeout, what, last))


def read_env(path):
    with open(path) as handle:
        return dict(line.strip().split("=", 1) for line in handle if "=" in line)


@pytest.fixture(scope="module")
def ws():
    made = ensure()
    assert made.returncode == 0, made.stderr
    env = read_env(made.stdout.strip())
    client = httpx.Client(base_url=env["LEPTON_WORKSPACE_URL"], timeout=30,
                          headers={"Authorization": "Bearer " + env["LEPTON_WORKSPACE_TOKEN"]})
    client.env = env
    client.made = []
    yield client
    for name in client.made:
        client.delete("/deployments/" + name)
    for name in client.made:
        wait_for(lambda n=name: client.get("/deployments/" + n).status_code == 404, 60, "deployment %s gone" % name)
    for secret in client.get("/usersecrets").json():
        if RUN in secret["name"]:
            client.delete("/usersecrets/" + secret["name"])
    client.close()


def deployment(name, **spec):
    body = {"metadata": {"id": name, "name": name},
            "spec": {"container": {"image": IMAGE, "command": SERVER, "ports": [{"container_port": 8080}]},
                     "resource_requirement": {"resource_shape": "cpu.small", "min_replicas": 1, "max_replicas": 1}}}
    body["spec"].update(spec)
    return body


def create(ws, name, **spec):
    response = ws.post("/deployments", json=deployment(name, **spec))
    if response.status_code == 200:
        ws.made.append(name)
    return response


def ready(ws, name, timeout=30):
    return wait_for(lambda: ws.get("/deployments/" + name).json()["status"]["state"] == "Ready" and
                    ws.get("/deployments/" + name).json(), timeout, "deployment %s Ready" % name)


def gone(ws, name):
    assert ws.delete("/deployments/" + name).status_code == 200
    assert ws.get("/deployments/" + name).json()["status"]["state"] in ("Deleting",) or \
        ws.get("/deployments/" + name).status_code == 404
    wait_for(lambda: ws.get("/deployments/" + name).status_code == 404, 60, "deployment %s gone" % name)
    ws.made.remove(name)
    assert docker("ps", "-aq", "--filter", "label=tao.lepton-standin.deployment=%s" % name).stdout.split() == []


def test_tokens_and_workspaces(ws):
    url = ws.env["LEPTON_WORKSPACE_URL"]
    assert httpx.get(url + "/workspace").status_code == 401
    wrong = httpx.get(url + "/workspace", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "Unauthorized"
    with open(os.path.join(DIR, "viewer-token")) as handle:
        viewer = {"Authorization": "Bearer " + handle.read().strip()}
    assert httpx.get(url + "/deployments", headers=viewer).status_code == 200
    refused = httpx.post(url + "/usersecrets", headers=viewer, json=[{"name": "x-%s" % RUN, "value": "v"}])
    assert refused.status_code == 403 and refused.json()["code"] == "Forbidden"
    other = httpx.get(url.rsplit("/", 1)[0] + "/elsewhere/workspace", headers=ws.headers)
    assert other.status_code == 404 and other.json()["code"] == "WorkspaceNotFound"
    info = ws.get("/workspace").json()
    assert info["workspace_name"] == ws.env["LEPTON_WORKSPACE_ID"] and info["resource_quota"]["limit"]["accelerator_num"] > 0


@pytest.mark.parametrize("spec, path", [
    ({"container": {"image": IMAGE, "imagee": "x"}}, "spec.container.imagee"),
    ({"resource_requirement": {"resource_shape": "cpu.small", "min_replicas": "1"}}, "spec.resource_requirement.min_replicas"),
    ({"envs": [{"name": "A", "value": 1}]}, "spec.envs[0].value"),
    ({"envs": [{"name": "A", "value": "1", "value_from": {"secret_name_ref": "s"}}]}, "exactly one of value and value_from"),
    ({"envs": [{"name": "LEPTON_WORKSPACE_ID", "value": "x"}]}, "reserved"),
    ({"api_tokens": [{"value_from": {"token_name_ref": "OTHER"}}]}, "the only token reference is WORKSPACE_TOKEN"),
    ({"api_tokens": [{"value": "***"}]}, "redacted API-token placeholder"),
    ({"api_tokens": [{"value": "t"}], "allow_unauthenticated_access": True}, "cannot be combined"),
    ({"resource_requirement": {"resource_shape": "gpu.1xh100-sxm"}}, "only in dedicated node groups"),
    ({"resource_requirement": {"resource_shape": "gpu.1xh100-sxm",
                               "affinity": {"allowed_dedicated_node_groups": ["ng-nope"]}}}, "ng-nope does not exist"),
    ({"image_pull_secrets": ["nope"]}, "image pull secret nope does not exist"),
    ({"health": {"liveness": {"tcp": {"port": 9999}}}}, "not a port of the container"),
])
def test_bodies_are_checked_against_leptonai_models_and_the_api_rules(ws, spec, path):
    refused = create(ws, "bad-%s" % RUN, **spec)
    assert refused.status_code == 400 and refused.json()["code"] == "InvalidRequest", refused.text
    assert path in refused.json()["message"]


@pytest.mark.parametrize("name", ["Upper", "9lives", "ends-", "x" * 37])
def test_names_follow_the_api_rule(ws, name):
    assert create(ws, name).status_code == 400


def test_a_deployment_runs_and_its_endpoint_takes_the_token(ws):
    name = "sd-run-%s" % RUN
    made = create(ws, name, api_tokens=[{"value_from": {"token_name_ref": "WORKSPACE_TOKEN"}}],
                  auth_config={"lepton_workspace_token_auth": {"remove_authorization_header": True}},
                  health={"liveness": {"initial_delay_seconds": 600, "tcp": {"port": 8080}}},
                  envs=[{"name": "TAO_EMULATOR_LOAD_SECONDS", "value": "0"}])
    assert made.status_code == 200 and made.json()["status"]["state"] == "Starting"
    assert create(ws, name).status_code == 409
    found = ready(ws, name)
    url = found["status"]["endpoint"]["external_endpoint"]
    token = {"Authorization": "Bearer " + ws.env["LEPTON_WORKSPACE_TOKEN"]}
    assert httpx.get(url + READY).status_code == 401
    assert httpx.get(url + READY, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert wait_for(lambda: httpx.get(url + READY, headers=token).status_code == 200, 20)
    journal = httpx.get(ws.env["LEPTON_WORKSPACE_URL"].split("/api/")[0] + "/_standin/journal", headers=ws.headers).json()
    forwarded = [j for j in journal if j["kind"] == "ingress" and j["deployment"] == name and j["status"] == 200]
    assert forwarded and not any(j["authorization_forwarded"] for j in forwarded)
    replicas = ws.get("/deployments/%s/replicas" % name).json()
    assert len(replicas) == 1 and replicas[0]["status"]["node"]["name"] == "lepton-shared-cpu-0"
    assert ws.get("/deployments/%s/readiness" % name).json()[replicas[0]["id"]][0]["reason"] == "Ready"
    reasons = [e["reason"] for e in ws.get("/deployments/%s/events" % name).json()]
    assert reasons[:3] == ["Created", "Scheduled", "Created"] and "Started" in reasons
    began = time.monotonic()
    log = ws.get("/deployments/%s/replicas/%s/log" % (name, replicas[0]["id"])).text
    assert "ready for inference" in log and time.monotonic() - began < 5
    listed = [d["metadata"]["name"] for d in ws.get("/deployments").json()]
    assert name in listed
    gone(ws, name)


def test_the_allowlist_and_an_open_endpoint(ws):
    name = "sd-ip-%s" % RUN
    create(ws, name, api_tokens=[], allow_unauthenticated_access=True, auth_config={"ip_allowlist": ["10.9.0.0/16"]})
    url = ready(ws, name)["status"]["endpoint"]["external_endpoint"]
    assert httpx.get(url + READY).status_code == 403
    gone(ws, name)
    name = "sd-open-%s" % RUN
    create(ws, name, api_tokens=[{"value": "literal-%s" % RUN}], envs=[{"name": "TAO_EMULATOR_LOAD_SECONDS", "value": "0"}])
    found = ready(ws, name)
    assert found["spec"]["api_tokens"] == [{"value": "***"}]
    url = found["status"]["endpoint"]["external_endpoint"]
    headers = {"Authorization": "Bearer literal-%s" % RUN}
    assert wait_for(lambda: httpx.get(url + READY, headers=headers).status_code == 200, 20)
    journal = httpx.get(ws.env["LEPTON_WORKSPACE_URL"].split("/api/")[0] + "/_standin/journal", headers=ws.headers).json()
    assert any(j["kind"] == "ingress" and j["deployment"] == name and j["authorization_forwarded"] for j in journal)
    assert "literal-%s" % RUN not in json.dumps(journal)
    gone(ws, name)


def test_a_secret_reaches_the_container_and_nothing_else(ws):
    canary = "canary-standin-" + uuid.uuid4().hex
    secret = "sd-secret-%s" % RUN
    assert ws.post("/usersecrets", json=[{"name": secret, "value": canary, "visibility": "private"}]).status_code == 200
    assert ws.post("/usersecrets", json=[{"name": secret, "value": "again"}]).status_code == 409
    assert ws.post("/usersecrets", json=[{"name": "LEPTON_X", "value": "v"}]).status_code == 400
    assert ws.post("/usersecrets", json=[{"name": "s-%s" % RUN}]).status_code == 400
    name = "sd-env-%s" % RUN
    create(ws, name, envs=[{"name": "HF_TOKEN", "value_from": {"secret_name_ref": secret}}])
    ready(ws, name)
    [cid] = docker("ps", "-q", "--filter", "label=tao.lepton-standin.deployment=%s" % name).stdout.split()
    inspected = json.loads(docker("inspect", cid).stdout)[0]
    assert "HF_TOKEN=" + canary in inspected["Config"]["Env"]
    assert canary not in json.dumps(inspected["Config"]["Cmd"]) + json.dumps(inspected["Config"]["Entrypoint"])
    assert canary not in ws.get("/usersecrets").text and canary not in ws.get("/deployments/" + name).text
    journal = httpx.get(ws.env["LEPTON_WORKSPACE_URL"].split("/api/")[0] + "/_standin/journal", headers=ws.headers).text
    assert canary not in journal and "<redacted: %d characters" % len(canary) in journal
    with open(os.path.join(DIR, "server.log")) as handle:
        assert canary not in handle.read()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    assert canary.encode() not in handle.read(), pid
            except OSError:
                continue
    gone(ws, name)
    assert ws.delete("/usersecrets/" + secret).status_code == 200
    assert ws.delete("/usersecrets/" + secret).status_code == 404


def test_failures_a_replica_reports(ws):
    name = "sd-nocap-%s" % RUN
    group = ws.get("/dedicated-node-groups").json()[0]["metadata"]["id"]
    nodes = ws.get("/dedicated-node-groups/%s/nodes" % group).json()
    most = max(int(n["spec"]["resource"]["gpu"]["total"]) for n in nodes)
    shape = "gpu.%dxh100-sxm" % (most * 2) if most * 2 in (2, 4, 8) else "gpu.8xh100-sxm"
    requirement = {"resource_shape": shape, "min_replicas": 1, "max_replicas": 1,
                   "affinity": {"allowed_dedicated_node_groups": [group]}}
    made = create(ws, name, resource_requirement=requirement)
    if made.status_code == 403:
        pytest.fail("the quota refused %s: %s" % (shape, made.text))
    issue = wait_for(lambda: [i for r in ws.get("/deployments/%s/readiness" % name).json().values() for i in r
                              if i["reason"] == "NoCapacity"], 10, "NoCapacity")
    assert "Insufficient nvidia.com/gpu" in issue[0]["message"]
    assert any(e["reason"] == "FailedScheduling" for e in ws.get("/deployments/%s/events" % name).json())
    gone(ws, name)
    name = "sd-pull-%s" % RUN
    ws.post("/deployments", json=dict(deployment(name), spec=dict(deployment(name)["spec"],
                                                                  container={"image": "tao-inference-missing:never"})))
    ws.made.append(name)
    issue = wait_for(lambda: [i for r in ws.get("/deployments/%s/readiness" % name).json().values() for i in r
                              if i["reason"] == "ConfigError"], 10, "ConfigError")
    assert "ErrImagePull" in issue[0]["message"]
    gone(ws, name)
    name = "sd-crash-%s" % RUN
    create(ws, name, container={"image": IMAGE, "command": ["/bin/sh", "-c", "echo bye; exit 3"]})
    ended = wait_for(lambda: ws.get("/deployments/%s/termination" % name).json(), 10, "a termination")
    [record] = list(ended.values())[0][:1]
    assert record["exit_code"] == 3 and record["reason"] == "Error" and record["message"] == "bye"
    assert ws.get("/deployments/" + name).json()["status"]["state"] == "Starting"
    gone(ws, name)


def test_the_quota_and_the_node_group_volume(ws):
    group = ws.get("/dedicated-node-groups").json()[0]
    refused = create(ws, "sd-quota-%s" % RUN, resource_requirement={
        "resource_shape": "gpu.8xh100-sxm", "min_replicas": 9, "max_replicas": 9,
        "affinity": {"allowed_dedicated_node_groups": [group["metadata"]["id"]]}})
    assert refused.status_code == 403 and refused.json()["code"] == "QuotaExceeded"
    assert group["spec"]["volumes"][0]["name"] == "tao-shared-fs"
    name = "sd-mount-%s" % RUN
    create(ws, name, mounts=[{"path": "/models/%s" % RUN, "mount_path": "/models", "from": "node-nfs:tao-shared-fs"}],
           resource_requirement={"resource_shape": "cpu.small", "min_replicas": 1, "max_replicas": 1,
                                 "affinity": {"allowed_dedicated_node_groups": [group["metadata"]["id"]]}})
    ready(ws, name)
    [cid] = docker("ps", "-q", "--filter", "label=tao.lepton-standin.deployment=%s" % name).stdout.split()
    mounts = json.loads(docker("inspect", cid).stdout)[0]["Mounts"]
    assert [(m["Destination"], m["Source"].endswith("storage/tao-shared-fs/models/%s" % RUN)) for m in mounts] == \
        [("/models", True)]
    gone(ws, name)


SDK = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from leptonai.api.v2.client import APIClient
from leptonai.api.v2.types.common import Metadata
from leptonai.api.v2.types.deployment import (LeptonContainer, LeptonDeployment, LeptonDeploymentUserSpec,
                                               ResourceRequirement, EnvVar, EnvValue, TokenVar, TokenValue)
from leptonai.api.v2.types.secret import SecretItem
name, secret, image, command = json.loads(sys.argv[1])
client = APIClient()
out = {"workspace": client.info().workspace_name,
       "node_groups": [g.metadata.name for g in client.nodegroup.list_all()],
       "shapes": sorted(set(s.metadata.name for s in client.shapes.list_shapes()))}
client.secret.create([SecretItem(name=secret, value="sdk-value")])
out["secrets"] = [s.name for s in client.secret.list_all() if s.name == secret]
spec = LeptonDeploymentUserSpec(container=LeptonContainer(image=image, command=command),
                                resource_requirement=ResourceRequirement(resource_shape="cpu.small", min_replicas=1,
                                                                         max_replicas=1),
                                envs=[EnvVar(name="HF_TOKEN", value_from=EnvValue(secret_name_ref=secret))],
                                api_tokens=[TokenVar(value_from=TokenValue(token_name_ref="WORKSPACE_TOKEN"))])
created = client.deployment.create_with_response(LeptonDeployment(metadata=Metadata(id=name, name=name), spec=spec))
out["created"] = created.status.state.value
for _ in range(300):
    if client.deployment.get(name).status.state.value == "Ready":
        break
    time.sleep(0.1)
out["state"] = client.deployment.get(name).status.state.value
out["readiness"] = [i[0].reason.value for i in client.deployment.get_readiness(name).root.values()]
out["replicas"] = len(client.deployment.get_replicas(name))
out["events"] = sorted(set(e.reason for e in client.deployment.get_events(name)))
out["terminations"] = client.deployment.get_termination(name).root
out["deleted"] = client.deployment.delete(name)
client.secret.delete(secret)
print(json.dumps(out))
"""


def test_the_leptonai_client_reads_every_answer(ws):
    name, secret = "sd-sdk-%s" % RUN, "sd-sdk-secret-%s" % RUN
    ws.made.append(name)
    python = os.path.join(DIR, "venv", "bin", "python")
    env = dict(os.environ, **ws.env)
    done = subprocess.run([python, "-c", SDK, json.dumps([name, secret, IMAGE, SERVER])], capture_output=True, text=True,
                          timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["workspace"] == ws.env["LEPTON_WORKSPACE_ID"] and out["node_groups"] == ["tao-test-ng"]
    assert "cpu.small" in out["shapes"] and "gpu.8xh100-sxm" in out["shapes"] and out["secrets"] == [secret]
    assert out["created"] == "Starting" and out["state"] == "Ready" and out["readiness"] == ["Ready"]
    assert out["replicas"] == 1 and "Started" in out["events"] and out["terminations"] == {} and out["deleted"] is True
    wait_for(lambda: ws.get("/deployments/" + name).status_code == 404, 60, "deployment gone")
    ws.made.remove(name)


def test_the_script_reuses_a_running_stand_in_and_down_removes_what_it_made(tmp_path):
    first = ensure()
    with open(os.path.join(DIR, "server.pid")) as handle:
        pid = handle.read().strip()
    second = ensure()
    assert first.returncode == second.returncode == 0 and first.stdout == second.stdout
    with open(os.path.join(DIR, "server.pid")) as handle:
        assert handle.read().strip() == pid
    assert oct(os.stat(first.stdout.strip()).st_mode & 0o777) == "0o600"
    # A second stand-in of its own (sharing the first's virtualenv), then --down.
    own = {"TAO_LEPTON_DIR": str(tmp_path / "lepton"), "TAO_LEPTON_VENV": os.path.join(DIR, "venv"),
           "TAO_LEPTON_WORKSPACE": "downtest"}
    made = ensure(env=own)
    assert made.returncode == 0, made.stderr
    env = read_env(made.stdout.strip())
    assert env["LEPTON_WORKSPACE_URL"] != read_env(first.stdout.strip())["LEPTON_WORKSPACE_URL"]
    client = httpx.Client(base_url=env["LEPTON_WORKSPACE_URL"],
                          headers={"Authorization": "Bearer " + env["LEPTON_WORKSPACE_TOKEN"]})
    assert client.post("/deployments", json=deployment("downtest")).status_code == 200
    label = "label=tao.lepton-standin=%s" % own["TAO_LEPTON_DIR"]

    def running():
        return docker("ps", "-aq", "--filter", label).stdout.split()

    wait_for(running, 30, "the container")
    down = ensure("--down", env=own)
    assert down.returncode == 0, down.stderr
    assert docker("ps", "-aq", "--filter", label).stdout.split() == []
    assert not os.path.exists(made.stdout.strip()) and not os.path.exists(os.path.join(own["TAO_LEPTON_DIR"], "token"))
    with pytest.raises(httpx.TransportError):
        client.get("/workspace")
    assert ensure().returncode == 0  # the shared stand-in is still there
