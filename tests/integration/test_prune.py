"""tao_inference_prune through ansible-playbook on the real Docker engine: what is gone goes (an exited container
is removed with its entry), what runs stays, another machine's entry of a shared registry stays; info changes
nothing meanwhile."""

import json
import os

from . import test_lepton as lepton
from .conftest import docker, service_task
from .test_lepton import lep  # noqa: F401  pylint: disable=unused-import

PRUNE = "- name: Prune\n  tao.inference.tao_inference_prune:\n    all: true\n"


def test_prune_removes_an_exited_container_keeps_what_runs_and_another_machines_entry(harness):
    run = harness.play(service_task(extra="name: exits\nwait: false") + service_task(title="Second", extra="name: runs\nwait: false")
                       + service_task(title="Third", extra="name: elsewhere\nwait: false"))
    assert run.rc == 0, run.output[-3000:]
    exits, runs, elsewhere = (run.task(t)["result"]["job_id"] for t in ("Start", "Second", "Third"))
    docker("stop", "-t", "1", exits)  # exited, still there
    docker("rm", "-f", elsewhere)  # gone here, but the entry says another machine runs it
    data = harness.registry_data()
    data[elsewhere]["machine"] = "gpu-node-7.example"
    with open(harness.registry, "w") as handle:
        json.dump(data, handle)
    os.chmod(harness.registry, 0o600)

    before = os.stat(harness.registry).st_mtime_ns
    info = harness.play("- name: Info\n  tao.inference.tao_inference_info:\n")
    states = dict((s["job_id"], s["platform_status"]["state"]) for s in info.task("Info")["result"]["services"])
    assert info.task("Info")["status"] == "ok" and states[exits] == "exited" and states[runs] == "running"
    assert os.stat(harness.registry).st_mtime_ns == before  # info wrote nothing

    check = harness.play(PRUNE, args=["--check", "--diff"]).task("Prune")
    assert check["status"] == "changed" and check["result"]["pruned"] == [exits]
    assert list(check["result"]["diff"]["before"]) == [exits] and docker("inspect", exits, check=False).returncode == 0
    pruned = harness.play(PRUNE).task("Prune")
    assert pruned["status"] == "changed" and pruned["result"]["pruned"] == [exits]
    assert pruned["result"]["removed"] == [exits] and docker("inspect", exits, check=False).returncode != 0
    kept = dict((k["job_id"], k["reason"]) for k in pruned["result"]["kept"])
    assert kept[runs] == "it is running" and "gpu-node-7.example" in kept[elsewhere]
    assert sorted(harness.entries()) == sorted([runs, elsewhere])
    again = harness.play(PRUNE).task("Prune")
    assert again["status"] == "ok" and again["result"]["pruned"] == []
    stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: runs\n    state: absent\n")
    assert stop.rc == 0, stop.output[-3000:]


def test_prune_says_what_to_select(harness):
    run = harness.play("- name: Prune\n  tao.inference.tao_inference_prune:\n")
    msg = run.task("Prune")["result"]["msg"]
    assert run.rc != 0 and "job_id, name, or all: true" in msg
    both = harness.play("- name: Prune\n  tao.inference.tao_inference_prune:\n    all: true\n    name: x\n")
    assert both.rc != 0 and "mutually exclusive" in both.task("Prune")["result"]["msg"]


def test_prune_deletes_the_lepton_secrets_a_deployment_deleted_elsewhere_left(lep):  # noqa: F811
    name = "lep-prune-%s" % lepton.RUN
    run = lep.play(lepton.start_task(name, extra="secret_env: [HF_TOKEN]\nwait: false"),
                   env=dict(lep.lepton_env, HF_TOKEN=lepton.CANARY))
    assert run.rc == 0, run.output[-3000:]
    job_id = run.task("Start")["result"]["job_id"]
    lep.job_ids.add(job_id)
    assert lep.workspace.secrets([job_id])
    lep.workspace.delete(name)  # deleted in the workspace, behind the collection's back
    assert lepton.wait_for(lambda: not lep.workspace.deployments(lep.registry), 30)
    prune = "- name: Prune\n  tao.inference.tao_inference_prune:\n    name: %s\n" % name
    info = lep.play("- name: Info\n  tao.inference.tao_inference_info:\n", env=lep.lepton_env).task("Info")
    assert info["status"] == "ok" and info["result"]["services"][0]["platform_status"]["state"] == "missing"
    assert lep.workspace.secrets([job_id])  # info changed nothing
    pruned = lep.play(prune, env=lep.lepton_env).task("Prune")
    assert pruned["status"] == "changed" and pruned["result"]["released"] == [job_id]
    assert lep.workspace.secrets([job_id]) == [] and lep.entries() == {}
    lepton.assert_nothing_left(lep)
