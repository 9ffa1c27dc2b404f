"""The shipped playbooks, as a user runs them (no terminal: every value given with -e)."""

import os

from .conftest import IMAGE, ROOT

PLAYBOOKS = os.path.join(ROOT, "playbooks")
PNG = os.path.join(PLAYBOOKS, "files", "demo.png")


def playbook(name):
    return os.path.join(PLAYBOOKS, name + ".yml")


def test_start_status_request_stop(harness):
    start = harness.playbook(playbook("start"), {
        "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://nvidia/Cosmos-Reason1-7B", "tao_name": "pb",
        "tao_image": IMAGE, "tao_num_gpus": 0, "tao_env": {"TAO_EMULATOR_LOAD_SECONDS": "1.5"}})
    assert start.rc == 0, start.output
    out = start.stdout
    job_id = start.task("Start the service")["result"]["job_id"]
    for line in ("Inference service started.", "Job ID : %s" % job_id, "Arch   : cosmos-rl",
                 "URL    : http://localhost:"):
        assert line in out
    # The wait is visible: the loading state, then ready.
    assert "%s: model_loading after" % job_id in out
    assert "%s: ready after" % job_id in out
    assert out.index("model_loading after") < out.index("ready after")

    status = harness.playbook(playbook("status"))
    assert status.rc == 0, status.output
    assert job_id in status.stdout and "running" in status.stdout and "ready" in status.stdout

    asked = harness.playbook(playbook("request"), {"tao_prompt": "Describe it", "tao_media": PNG,
                                                   "tao_sampling": {"max_tokens": 32}})
    assert asked.rc == 0, asked.output
    assert "Answer (" in asked.stdout and "answered 'Describe it'" in asked.stdout
    assert "max_tokens 32 (given)" in asked.stdout and "top_p 0.8 (default)" in asked.stdout

    # Without sampling and without a terminal, no default is taken silently: the play names the variable.
    unasked = harness.playbook(playbook("request"), {"tao_prompt": "Again", "tao_media": [PNG]})
    assert unasked.rc != 0
    msg = unasked.task("Stop when the sampling values cannot be asked for")["result"]["msg"]
    assert msg.startswith("Set tao_sampling: the sampling values for cosmos-rl (max_tokens default 1024, ")
    assert "There is no terminal to ask on." in msg
    # {} accepts every default, explicitly; a survey gives it as JSON text.
    defaults = harness.playbook(playbook("request"), {"tao_prompt": "Again", "tao_media": [PNG],
                                                      "tao_sampling": '{"temperature": 0.5}'})
    assert defaults.rc == 0, defaults.output
    assert "max_tokens 1024 (default)" in defaults.stdout and "temperature 0.5 (given)" in defaults.stdout

    unconfirmed = harness.playbook(playbook("stop"))
    assert unconfirmed.rc != 0 and "Not stopped: there is no terminal to confirm on; set tao_confirm=yes" in unconfirmed.output
    assert job_id in harness.entries()
    stop = harness.playbook(playbook("stop"), {"tao_confirm": "yes"})
    assert stop.rc == 0, stop.output
    assert "Stopped %s" % job_id in stop.stdout
    assert harness.entries() == {} and harness.containers() == []
    nothing = harness.playbook(playbook("stop"), {"tao_confirm": "yes"})
    assert nothing.rc != 0 and "nothing to stop" in nothing.output


def test_start_playbook_failure_stops_the_service_and_shows_the_cause(harness):
    start = harness.playbook(playbook("start"), {
        "tao_network_arch": "tao-dataservices", "tao_model_path": "hf_model://org/m", "tao_image": IMAGE,
        "tao_num_gpus": 0, "tao_env": {"TAO_EMULATOR_LOAD_FAIL": "weights file is truncated"}})
    assert start.rc != 0
    msg = start.task("Fail with the reason and the last log lines")["result"]["msg"]
    assert "model_load_failed" in msg and "weights file is truncated" in msg
    assert "stopped and removed from the registry" in msg
    assert harness.entries() == {} and harness.containers() == []


def test_start_playbook_refuses_a_platform_that_has_not_landed(harness):
    start = harness.playbook(playbook("start"), {
        "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://a/b", "tao_platform": "nomad"})
    assert start.rc != 0
    assert "value of platform must be one of: " in start.output and ", got: nomad" in start.output
    assert harness.entries() == {}


def test_demo_playbook(harness):
    demo = harness.playbook(playbook("demo"))
    assert demo.rc == 0, demo.output
    assert "Inference service started." in demo.stdout
    assert "Answer: [tao-inference reference microservice] cosmos-rl answered 'What is in this image?'" in demo.stdout
    assert harness.entries() == {} and harness.containers() == []
