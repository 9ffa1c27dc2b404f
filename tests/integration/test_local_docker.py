"""local-docker end to end: modules through ansible-playbook on the real engine."""

import json
import os
import socket
import time

from .conftest import IMAGE, docker, service_task

PNG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "playbooks", "files", "demo.png")

REQUEST = """\
- name: Ask
  tao.inference.tao_inference_request:
    prompt: What is in this image?
    media: ["{png}"]
    sampling: {{}}
{extra}
  register: answer
"""


def request_task(extra="", png=PNG):
    return REQUEST.format(png=png, extra="".join("    %s\n" % line for line in extra.splitlines()))


def test_check_apply_apply_check_is_changed_changed_unchanged_unchanged(harness):
    tasks = service_task(extra="name: idem")
    check1 = harness.play(tasks, args=["--check", "--diff"])
    assert check1.rc == 0, check1.output
    assert check1.task("Start")["status"] == "changed"
    assert harness.containers() == [] and harness.entries() == {}  # check mode touched nothing

    apply1 = harness.play(tasks, args=["--diff"])
    assert apply1.rc == 0, apply1.output
    first = apply1.task("Start")["result"]
    assert apply1.task("Start")["status"] == "changed"
    assert first["host_url"] == "http://localhost:%d" % first["host_port"]
    assert first["chat_url"] == first["host_url"] + "/v1/chat/completions"
    assert first["diff"]["before"] == {} and first["diff"]["after"]["job_id"] == first["job_id"]
    assert first["readiness"]["state"] == "ready"

    apply2 = harness.play(tasks)
    assert apply2.rc == 0, apply2.output
    assert apply2.task("Start")["status"] == "ok"
    assert apply2.task("Start")["result"]["job_id"] == first["job_id"]

    check2 = harness.play(tasks, args=["--check"])
    assert check2.task("Start")["status"] == "ok"
    [container] = harness.containers()
    assert docker("inspect", "--format", "{{.Name}}", container).stdout.strip() == "/" + first["job_id"]
    assert list(harness.entries()) == [first["job_id"]]

    # A changed spec recreates the service: new job_id, the old container gone.
    changed = harness.play(service_task(extra="name: idem\nenv:\n  LOG_LEVEL: debug"))
    assert changed.task("Start")["status"] == "changed", changed.output
    second = changed.task("Start")["result"]["job_id"]
    assert second != first["job_id"]
    assert list(harness.entries()) == [second]
    assert docker("inspect", first["job_id"], check=False).returncode != 0

    stop = "- name: Stop\n  tao.inference.tao_inference_service:\n    name: idem\n    state: absent\n"
    assert harness.play(stop, args=["--check"]).task("Stop")["status"] == "changed"
    assert list(harness.entries()) == [second]
    assert harness.play(stop).task("Stop")["status"] == "changed"
    assert harness.play(stop).task("Stop")["status"] == "ok"
    assert harness.entries() == {} and harness.containers() == []


def test_absent_of_a_vanished_service_is_unchanged_and_tidies_the_registry(harness):
    run = harness.play(service_task(extra="name: gone\nwait: false"))
    job_id = run.task("Start")["result"]["job_id"]
    docker("rm", "-f", job_id)
    info = harness.play("- name: Info\n  tao.inference.tao_inference_info:\n")
    service = info.task("Info")["result"]["services"][0]
    assert service["platform_status"]["state"] == "missing" and service["running"] is False
    stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    job_id: %s\n    state: absent\n"
                        % job_id)
    assert stop.task("Stop")["status"] == "ok"
    assert stop.task("Stop")["result"]["tidied"] == [job_id]
    assert harness.entries() == {}


def test_three_concurrent_starts_get_three_ports_and_all_answer(harness):
    inventory = "\n".join("svc%d ansible_connection=local ansible_python_interpreter=PYTHON" % i for i in range(3))
    run = harness.play(service_task(), hosts="all", inventory=inventory, args=["--forks", "3"])
    assert run.rc == 0, run.output
    results = [run.task("Start", host="svc%d" % i)["result"] for i in range(3)]
    ports = sorted(r["host_port"] for r in results)
    assert len(set(ports)) == 3, ports
    assert len(harness.entries()) == 3 and len(harness.containers(all_=False)) == 3

    # With three running, a request by arch alone fails and lists every candidate.
    ambiguous = harness.play(request_task(extra="network_arch: cosmos-rl"))
    assert ambiguous.rc != 0
    failure = ambiguous.task("Ask")["result"]
    assert "3 cosmos-rl services are running" in failure["msg"]
    assert sorted(c["job_id"] for c in failure["candidates"]) == sorted(r["job_id"] for r in results)
    for r in results:
        assert r["job_id"] in failure["msg"] and r["host_url"] in failure["msg"]
    bare = harness.play(request_task())
    assert "3 services are running and none was chosen" in bare.task("Ask")["result"]["msg"]

    # By job_id, each one answers on its own port.
    for r in results:
        asked = harness.play(request_task(extra="job_id: %s" % r["job_id"]))
        assert asked.rc == 0, asked.output
        answer = asked.task("Ask")["result"]
        assert answer["job_id"] == r["job_id"] and answer["host_url"] == r["host_url"]
        assert "reference microservice" in answer["content"] and answer["status"] == 200


def test_request_policy_through_the_module(harness):
    harness.play(service_task())
    wrong = harness.play(request_task().replace("sampling: {}", "sampling: {guidance: 3}"))
    assert wrong.rc != 0
    assert "sampling.guidance belongs to cosmos-predict2.5, but the chosen service runs cosmos-rl" in \
        wrong.task("Ask")["result"]["msg"]
    no_media = harness.play("""\
- name: Ask
  tao.inference.tao_inference_request:
    prompt: hello
    sampling: {}
""")
    assert "cosmos-rl needs an image or a video" in no_media.task("Ask")["result"]["msg"]
    chosen = harness.play(request_task().replace("sampling: {}", "sampling: {max_tokens: 64, temperature: 0.1}"))
    result = chosen.task("Ask")["result"]
    applied = dict((a["field"], (a["value"], a["default"])) for a in result["sampling_applied"])
    assert applied == {"max_tokens": (64, False), "temperature": (0.1, False), "top_p": (0.8, True)}
    assert "max_tokens=64" in result["content"]
    assert any("ignores temperature" in w for w in result.get("warnings", []))


def test_every_arch_starts_and_answers(harness):
    cases = [
        ("cosmos-predict2.5", "hf_model://nvidia/Cosmos-Predict2.5-2B", "data:video/mp4;base64,"),
        ("tao-dataservices", "hf_model://org/tiny-model", "reference microservice"),
    ]
    for arch, model, expect in cases:
        run = harness.play(service_task(arch=arch, model=model) + """\
- name: Ask
  tao.inference.tao_inference_request:
    job_id: "{{ svc.job_id }}"
    prompt: a robot stacks cubes
    sampling: {}
  register: answer
""")
        assert run.rc == 0, run.output
        content = run.task("Ask")["result"]["content"]
        if arch == "cosmos-predict2.5":
            assert content.startswith(expect), content[:80]  # the answer is the video itself
        else:
            assert expect in content, content
    status = json.loads(docker("inspect", "--format", "{{json .Config.Cmd}}", harness.containers()[0]).stdout)
    assert status[:2] == ["/bin/sh", "-c"] and status[2].startswith("umask 0 && ")


def test_load_failure_fails_fast_with_reason_and_log_and_leaves_nothing(harness):
    started = time.monotonic()
    run = harness.play(service_task(extra="""\
env:
  TAO_EMULATOR_LOAD_SECONDS: "0.5"
  TAO_EMULATOR_LOAD_FAIL: "CUDA out of memory while loading shard 3"
wait_timeout: 300"""))
    elapsed = time.monotonic() - started
    assert run.rc != 0
    msg = run.task("Start")["result"]["msg"]
    assert "model_load_failed" in msg
    assert "CUDA out of memory while loading shard 3" in msg  # the real cause, from the container log
    assert "stopped and removed from the registry" in msg
    assert elapsed < 30, elapsed
    assert harness.containers() == [] and harness.entries() == {}


def test_container_that_exits_fails_fast(harness):
    run = harness.play(service_task(model="/models/does-not-exist", arch="tao-dataservices",
                                    extra="server_options: {idle_timeout_minutes: 5}\nwait_timeout: 300"))
    assert run.rc != 0
    assert "model path not found: /models/does-not-exist" in run.task("Start")["result"]["msg"]
    assert harness.containers() == [] and harness.entries() == {}


def test_ports_held_by_other_programs_are_skipped(harness):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", 8080))
        listener.listen(1)
    except OSError:
        listener.close()
        listener = None  # 8080 is already held by something else: the rule is tested all the same
    try:
        run = harness.play(service_task(extra="wait: false"))
        assert run.rc == 0, run.output
        assert run.task("Start")["result"]["host_port"] != 8080
        taken = harness.play(service_task(extra="host_port: 8080\nwait: false"))
        assert taken.rc != 0
        assert "host_port 8080 is in use by another program" in taken.task("Start")["result"]["msg"]
        assert len(harness.entries()) == 1
    finally:
        if listener:
            listener.close()


def test_secret_canary_appears_nowhere(harness):
    canary = "hf_CANARY_d41d8cd98f00b204e9800998ecf8427e"
    env = {"HF_TOKEN": canary}
    run = harness.play(service_task(extra="name: canary") + request_task() + """\
- name: Info
  tao.inference.tao_inference_info:
  register: info
- name: Status route
  ansible.builtin.uri:
    url: "{{ svc.host_url }}/api/v1/status"
  register: status
""", args=["-vvv", "--diff"], env=env)
    assert run.rc == 0, run.output
    assert canary not in run.output
    assert canary not in json.dumps(run.records)
    assert canary not in open(harness.registry).read()
    job_id = run.task("Start")["result"]["job_id"]
    inspect = json.loads(docker("inspect", job_id).stdout)[0]
    assert canary not in json.dumps(inspect["Config"]["Cmd"]) + json.dumps(inspect["Args"])
    assert canary not in json.dumps(inspect["Config"]["Labels"])
    # It did reach the container, through its environment only.
    assert "HF_TOKEN=%s" % canary in inspect["Config"]["Env"]
    assert run.task("Status route")["result"]["json"]["hf_token_set"] is True
    assert run.task("Start")["result"]["secret_env"] == ["HF_TOKEN"]


def test_prune_drops_entries_of_gone_services(harness):
    run = harness.play(service_task(extra="wait: false") + service_task(title="Second", extra="wait: false"))
    gone = run.task("Start")["result"]["job_id"]
    kept = run.task("Second")["result"]["job_id"]
    docker("rm", "-f", gone)
    check = harness.play("- name: Prune\n  tao.inference.tao_inference_prune:\n    all: true\n", args=["--check"])
    assert check.task("Prune")["result"]["pruned"] == [gone] and gone in harness.entries()
    pruned = harness.play("- name: Prune\n  tao.inference.tao_inference_prune:\n    all: true\n")
    assert pruned.task("Prune")["status"] == "changed" and pruned.task("Prune")["result"]["pruned"] == [gone]
    assert [k["job_id"] for k in pruned.task("Prune")["result"]["kept"]] == [kept]
    assert list(harness.entries()) == [kept]
    assert harness.registry_data()["latest"] == kept


def test_unavailable_platform_and_bad_input_fail_clearly(harness):
    run = harness.play(service_task(extra="platform: nomad"))
    msg = run.task("Start")["result"]["msg"]
    assert "value of platform must be one of: local-docker, slurm, kubernetes" in msg and "got: nomad" in msg
    slurm = harness.play(service_task(extra="platform: slurm"))
    assert "platform slurm needs slurm_login_host" in slurm.task("Start")["result"]["msg"]
    bad = harness.play(service_task(model="s3://bucket/ckpt"))
    assert "reads no cloud storage" in bad.task("Start")["result"]["msg"]
    corrupt = harness.tmp / "registry.json"
    corrupt.write_text("{oops")
    broken = harness.play(service_task())
    assert str(corrupt) in broken.task("Start")["result"]["msg"] and corrupt.read_text() == "{oops"
    assert harness.containers() == []


def test_image_env_override_picks_the_image(harness):
    run = harness.play("""\
- name: Start
  tao.inference.tao_inference_service:
    network_arch: tao-dataservices
    model_path: hf_model://org/tiny
    num_gpus: 0
  register: svc
""", env={"IMAGE_TAO_DATASERVICES": IMAGE})
    assert run.rc == 0, run.output
    assert run.task("Start")["result"]["image"] == IMAGE


def test_request_retries_while_loading_and_fails_on_a_failed_load(harness):
    ask = request_task(extra='job_id: "{{ svc.job_id }}"')
    loading = harness.play(service_task(extra='wait: false\nenv: {TAO_EMULATOR_LOAD_SECONDS: "2"}') + ask)
    assert loading.rc == 0, loading.output
    answer = loading.task("Ask")["result"]
    assert answer["status"] == 200 and answer["attempts"] > 1  # 202 model_loading was retried

    failed = harness.play(service_task(title="Broken", extra='wait: false\nenv: {TAO_EMULATOR_LOAD_SECONDS: "0.2", '
                                                             'TAO_EMULATOR_LOAD_FAIL: "bad shard"}') + """\
- name: Wait for the load to fail
  ansible.builtin.pause:
    seconds: 1
""" + ask)
    assert failed.rc != 0
    result = failed.task("Ask")["result"]
    assert result["status"] == 503 and result["error_type"] == "model_load_error"
    assert "did not load" in result["msg"]
