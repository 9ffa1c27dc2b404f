"""The shipped playbooks, as a user runs them: without a terminal (every value given with -e, as cron, CI
or an AWX job does) and at a terminal (a pseudo-terminal answering each question)."""

import json
import os
import pty
import re
import select
import signal
import time

from .conftest import BIN, IMAGE, ROOT

PLAYBOOKS = os.path.join(ROOT, "playbooks")
PNG = os.path.join(PLAYBOOKS, "files", "demo.png")


def playbook(name):
    return os.path.join(PLAYBOOKS, name + ".yml")


def test_start_status_request_stop(harness):
    start = harness.playbook(playbook("start"), {
        "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://nvidia/Cosmos-Reason1-7B", "tao_name": "pb",
        "tao_image": IMAGE, "tao_num_gpus": 0, "tao_env": {"TAO_EMULATOR_LOAD_SECONDS": "3"}})
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
    assert re.search(r"localhost +%s +pb +cosmos-rl +running +yes +http://localhost:" % job_id, status.stdout), status.stdout

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
    assert unconfirmed.rc != 0
    assert "Not stopped: there is no terminal to confirm on; set tao_confirm=yes" in unconfirmed.output
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


def test_several_services_on_a_host_are_all_watched_and_every_failure_is_reported(harness):
    """Two services of a host, both failing to load: each is watched (not only the first), each is stopped, and
    the host fails once with both reasons and what still runs."""
    start = harness.playbook(playbook("start"), {
        "tao_network_arch": "tao-dataservices", "tao_model_path": "hf_model://org/m", "tao_image": IMAGE,
        "tao_num_gpus": 0, "tao_services_per_host": 2, "tao_name": "twice",
        "tao_env": {"TAO_EMULATOR_LOAD_FAIL": "weights file is truncated"}})
    assert start.rc != 0
    watched = [r for r in start.records if r["task"] == "Stop the service that did not become ready"]
    assert len(watched) == 2
    msg = start.task("Fail with every reason, naming what still runs")["result"]["msg"]
    assert msg.startswith("2 of 2 services on localhost did not start or become ready")
    assert msg.count("weights file is truncated") >= 2 and "Still running here: none" in msg
    assert harness.entries() == {} and harness.containers() == []


def test_start_playbook_in_check_mode_starts_nothing_and_says_so(harness):
    """--check: the role checks the platform, says what it would start, watches nothing (nothing was made) and
    leaves no entry or container; with several services per host too."""
    for count in (1, 2):
        start = harness.playbook(playbook("start"), {
            "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://nvidia/Cosmos-Reason1-7B",
            "tao_image": IMAGE, "tao_num_gpus": 0, "tao_services_per_host": count, "tao_name": "checked"},
            args=["--check"])
        assert start.rc == 0, start.output[-3000:]
        assert "(check mode: not started)" in start.output
        assert not [r for r in start.records if r["task"] == "Wait for a readiness change"]
        assert harness.entries() == {} and harness.containers() == []


def test_start_playbook_refuses_a_platform_that_has_not_landed(harness):
    start = harness.playbook(playbook("start"), {
        "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://a/b", "tao_platform": "nomad"})
    assert start.rc != 0
    assert "value of platform must be one of: " in start.output and ", got: nomad" in start.output
    assert harness.entries() == {}


def test_services_per_host_outside_1_to_64_is_refused_before_anything_starts(harness):
    for count in (0, -1, 65, 100000):
        start = harness.playbook(playbook("start"), {
            "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://a/b", "tao_image": IMAGE,
            "tao_services_per_host": count})
        assert start.rc != 0 and "must be from 1 to 64, got %d" % count in start.output, start.output
        assert harness.entries() == {} and harness.containers() == []


def test_a_max_fail_percentage_or_forward_choice_that_means_nothing_is_refused(harness):
    given = {"tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://a/b", "tao_image": IMAGE}
    for value in (-5, 101):
        start = harness.playbook(playbook("start"), dict(given, tao_max_fail_percentage=value))
        assert start.rc != 0 and "tao_max_fail_percentage must be a number from 0 to 100" in start.output, start.output
    start = harness.playbook(playbook("start"), dict(given, tao_max_fail_percentage="half"))  # Ansible's own check
    assert start.rc != 0 and "max_fail_percentage" in start.output, start.output
    start = harness.playbook(playbook("start"), dict(given, tao_controller_forward="maybe"))
    assert start.rc != 0 and "inference_service_controller_forward" in start.output, start.output
    assert harness.entries() == {} and harness.containers() == []


def test_demo_playbook(harness):
    demo = harness.playbook(playbook("demo"))
    assert demo.rc == 0, demo.output
    assert "Inference service started." in demo.stdout
    assert "Answer: [tao-inference reference microservice] cosmos-rl answered 'What is in this image?'" in demo.stdout
    assert harness.entries() == {} and harness.containers() == []


# -- questions: asked at a terminal, never without one ---------------------------------------------------------
def on_terminal(harness, name, extra_vars, answers=(), timeout=180):
    """Run a shipped playbook on a pseudo-terminal, as a user at a shell does, typing each answer when
    its prompt (a regular expression) shows. Returns (exit code, output, answers never asked for)."""
    argv = [os.path.join(BIN, "ansible-playbook"), playbook(name), "-e",
            json.dumps(dict({"tao_registry_path": harness.registry}, **extra_vars))]
    env = harness.env()
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, the pty its controlling terminal
        try:
            os.chdir(ROOT)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    out, pos, pending = b"", 0, list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready = select.select([fd], [], [], 0.2)[0]
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the child is gone
                    break
                if not chunk:
                    break
                out += chunk
            match = re.search(pending[0][0].encode(), out[pos:]) if pending else None
            if match:
                pos += match.end()
                time.sleep(0.3)  # ansible flushes the terminal's input before it reads an answer
                os.write(fd, pending.pop(0)[1].encode() + b"\r")
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        status = os.waitpid(pid, 0)[1]
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n"), pending


def test_at_a_terminal_every_missing_value_is_asked_for(harness):
    rc, out, unasked = on_terminal(harness, "start", {"tao_name": "tty", "tao_image": IMAGE, "tao_num_gpus": 0}, [
        (r"network_arch \(cosmos-rl, cosmos-predict2.5, tao-dataservices\)[^\n]*:", "cosmos-rl"),
        (r"model_path \(hf_model://<org>/<model>, or an absolute path inside the container\)[^\n]*:",
         "hf_model://nvidia/Cosmos-Reason1-7B")])
    assert rc == 0 and not unasked, out[-3000:]
    [job_id] = harness.entries()
    assert "%s: ready after" % job_id in out and harness.entries()[job_id]["network_arch"] == "cosmos-rl"

    # Each sampling field, its default shown; Enter takes it.
    rc, out, unasked = on_terminal(harness, "request", {"tao_media": PNG}, [
        (r"Prompt[^\n]*:", "What is it?"),
        (r"max_tokens for cosmos-rl \[default 1024\][^\n]*:", "16"),
        (r"temperature for cosmos-rl \[default 0.7\][^\n]*:", ""),
        (r"top_p for cosmos-rl \[default 0.8\][^\n]*:", "")])
    assert rc == 0 and not unasked, out[-3000:]
    assert "answered 'What is it?'" in out and "max_tokens 16 (given)" in out and "top_p 0.8 (default)" in out

    # An AWX job has a pseudo-terminal too, but nobody types into it: nothing is asked.
    rc, out = on_terminal(harness, "request", {"tao_prompt": "Hi", "tao_media": PNG, "awx_job_id": 42}, timeout=90)[:2]
    assert rc != 0 and "Set tao_sampling: the sampling values for cosmos-rl" in out and "[default" not in out
    rc, out = on_terminal(harness, "start", {"tao_interactive": False}, timeout=90)[:2]
    assert rc != 0 and "Set tao_network_arch and tao_model_path" in out and "network_arch (" not in out

    confirm = r"Stop %s \(cosmos-rl, [^\n]*\? \[y/N\][^\n]*:" % job_id
    rc, out, unasked = on_terminal(harness, "stop", {}, [(confirm, "y")])
    assert rc == 0 and not unasked, out[-3000:]
    assert "Stopped %s" % job_id in out and harness.entries() == {} and harness.containers() == []


def test_without_a_terminal_a_missing_value_stops_the_play_and_names_its_variable(harness):
    for name, given, says in [
            ("start", {}, "Set tao_network_arch and tao_model_path (-e tao_network_arch=cosmos-rl"),
            ("start", {"tao_network_arch": "cosmos-rl"}, "Set tao_model_path ("),
            ("request", {}, "Set tao_prompt (-e tao_prompt="),
            ("evaluate", {}, "Set tao_prompts_file: -e tao_prompts_file=")]:
        run = harness.playbook(playbook(name), given)
        assert run.rc != 0 and says in run.output, run.output[-2000:]
        assert "there is no terminal to ask on" in run.output or name == "evaluate"
    assert harness.entries() == {} and harness.containers() == []


def test_the_names_used_before_the_prefix_are_refused_not_ignored(harness):
    run = harness.playbook(playbook("start"), {"network_arch": "cosmos-rl", "model_path": "hf_model://a/b",
                                               "tao_image": IMAGE})
    assert run.rc != 0
    assert ("These variables are not read: network_arch (now tao_network_arch), model_path (now tao_model_path)"
            in run.output)
    # Given both ways (an inventory may hold the old name for something else), the tao_ name is used.
    run = harness.playbook(playbook("status"), {"registry_path": "/elsewhere", "tao_registry_path": harness.registry})
    assert run.rc == 0 and "No service is running." in run.stdout


def test_platform_options_come_as_a_dict_or_its_json_text(harness):
    run = harness.playbook(playbook("status"), {"tao_platform_options": "- docker_host"})
    assert run.rc != 0 and "tao_platform_options must be a dict of the platform's own options" in run.output
    run = harness.playbook(playbook("status"), {"tao_platform_options": '{"docker_host": "unix:///var/run/docker.sock"}'})
    assert run.rc == 0 and "No service is running." in run.stdout, run.output[-2000:]
