"""Batch requests through ansible-playbook against the reference microservice on the real engine."""

import base64
import json
import os
import shutil

from .conftest import ROOT, service_task

PNG = os.path.join(ROOT, "playbooks", "files", "demo.png")
EVALUATE = os.path.join(ROOT, "playbooks", "evaluate.yml")
BAD_PNG = "data:image/png;base64,A"  # passes the collection's checks, refused by the server (bad base64)


def batch_task(title, requests, extra=None, register="out"):
    """A tao_inference_request task over ``requests`` (dicts), as JSON inside YAML."""
    args = {"job_id": "{{ svc.job_id }}", "sampling": {}, "requests": requests}
    args.update(extra or {})
    return "- name: %s\n  tao.inference.tao_inference_request: %s\n  register: %s\n  ignore_errors: true\n" % (
        title, json.dumps(args), register)


def stats_task(title):
    return ("- name: %s\n  ansible.builtin.uri:\n    url: \"{{ svc.host_url }}/emulator/stats\"\n"
            "    return_content: true\n" % title)


def stats(run, title):
    return run.task(title)["result"]["json"]


def test_order_per_item_errors_retries_the_concurrency_bound_and_the_deadline(harness, tmp_path):
    answers = str(tmp_path / "out" / "answers.jsonl")
    loading = [{"id": "early%d" % i, "prompt": "early %d" % i, "media": PNG} for i in range(3)]
    main = [{"id": "q%d" % i, "prompt": "prompt %d" % i, "media": [PNG]} for i in range(11)]
    main.append({"id": "bad", "prompt": "broken", "media": [BAD_PNG]})  # fails first, listed last
    late = [{"id": "late%d" % i, "prompt": "late", "media": PNG} for i in range(10)]
    run = harness.play(
        service_task(extra='wait: false\nenv: {TAO_EMULATOR_LOAD_SECONDS: "1", TAO_EMULATOR_RESPONSE_MS: "200"}')
        + batch_task("While loading", loading, {"concurrency": 4})
        + batch_task("Batch", main, {"concurrency": 4, "output_path": answers, "return_content_max": 30})
        + stats_task("Stats")
        + batch_task("Strict", main[:1] + main[-1:], {"fail_on_item_error": True})
        + batch_task("Late", late, {"concurrency": 2, "deadline": 0.5})
        + stats_task("Stats after"))

    early = run.task("While loading")["result"]
    assert early["summary"]["ok"] == 3, run.output
    assert all(r["attempts"] > 1 for r in early["results"])  # 202 model_loading was retried

    result = run.task("Batch")["result"]
    assert run.task("Batch")["status"] == "changed"  # the answers file was written
    assert [r["id"] for r in result["results"]] == ["q%d" % i for i in range(11)] + ["bad"]
    for item in result["results"][:11]:
        assert item["status"] == "ok" and item["content"] == "[tao-inference reference microservice]"[:30]
        assert item["content_truncated"] is True and item["sampling_applied"][0]["field"] == "max_tokens"
    bad = result["results"][11]
    assert (bad["status"], bad["http_status"], bad["error_type"]) == ("failed", 400, "invalid_request")
    assert "Invalid base64" in bad["error"]
    assert (result["summary"]["ok"], result["summary"]["failed"], result["summary"]["concurrency"]) == (11, 1, 4)
    with open(answers) as handle:
        lines = [json.loads(line) for line in handle]
    assert [line["id"] for line in lines] == [r["id"] for r in result["results"]]
    assert "answered 'prompt 3' with 1 image(s)" in lines[3]["content"] and lines[3]["prompt"] == "prompt 3"

    # Never more than `concurrency` in flight, and the bound is reached.
    after_main = stats(run, "Stats")
    assert after_main["max_in_flight"] == 4
    assert after_main["requests"] == sum(r["attempts"] for r in early["results"]) + 12

    strict = run.task("Strict")
    assert strict["status"] == "failed"
    assert "1 of 2 requests failed; the first, request bad: the service rejected" in strict["result"]["msg"]
    assert [r["status"] for r in strict["result"]["results"]] == ["ok", "failed"]

    late_result = run.task("Late")["result"]["results"]
    assert [r["id"] for r in late_result] == ["late%d" % i for i in range(10)]
    ok = [i for i, r in enumerate(late_result) if r["status"] == "ok"]
    unsent = [i for i, r in enumerate(late_result) if r["attempts"] == 0]
    assert ok and unsent and max(ok) < min(unsent), late_result  # sent in input order, the rest never sent
    assert all(r["error_type"] == "deadline" for r in late_result if r["status"] != "ok")
    assert late_result[-1]["error"].startswith("not sent: the batch deadline of 0.5 s had passed")
    assert run.task("Late")["result"]["summary"]["elapsed"] < 2
    sent_late = stats(run, "Stats after")["requests"] - after_main["requests"] - 2
    assert sent_late < 10


def test_media_is_checked_before_sending_and_encoded_for_the_service(harness, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300000))
    big = tmp_path / "big.mp4"
    with open(str(big), "wb") as handle:
        handle.truncate((512 << 20) + 1)
    inline = "data:image/png;base64," + base64.b64encode(open(PNG, "rb").read()).decode()
    good = [{"id": "v%d" % i, "prompt": "clip %d" % i, "media": str(clip)} for i in range(3)]
    good += [{"id": "both", "prompt": "both", "media": [PNG, str(clip)]}, {"id": "inline", "prompt": "i",
                                                                           "media": inline}]
    invalid = [
        {"id": "fine", "prompt": "p", "media": PNG},
        {"id": "gif", "prompt": "p", "media": "https://example.invalid/a.gif"},
        {"id": "cloud", "prompt": "p", "media": "gs://bucket/a.mp4"},
        {"id": "no-media", "prompt": "p"},
        {"id": "huge", "prompt": "p", "media": str(big)},
        {"id": "wrong-arch", "prompt": "p", "media": PNG, "sampling": {"num_steps": 4}},
    ]
    run = harness.play(service_task(extra='env: {TAO_EMULATOR_LOAD_SECONDS: "0"}')
                       + batch_task("Media", good, {"concurrency": 3})
                       + batch_task("Invalid", invalid)
                       + stats_task("Stats"))
    results = run.task("Media")["result"]["results"]
    assert [r["status"] for r in results] == ["ok"] * 5, run.output
    assert all("with 0 image(s), 1 video(s)" in r["content"] for r in results[:3])
    assert "with 1 image(s), 1 video(s)" in results[3]["content"]
    assert "with 1 image(s), 0 video(s)" in results[4]["content"]
    assert "base64" not in json.dumps(results)  # no media copied into the results

    failed = run.task("Invalid")
    assert failed["status"] == "failed"
    msg = failed["result"]["msg"]
    assert msg.startswith("5 of 6 requests are invalid and nothing was sent")
    for expected in ("request gif: media https://example.invalid/a.gif has extension '.gif'",
                     "request cloud: media gs://bucket/a.mp4 is a cloud URI",
                     "request no-media: cosmos-rl needs an image or a video",
                     "request huge: media file %s is 512 MiB" % big,
                     "request wrong-arch: sampling.num_steps belongs to cosmos-predict2.5"):
        assert expected in msg
    assert stats(run, "Stats")["requests"] == 5  # the invalid batch sent nothing


def test_generated_videos_are_saved_as_files(harness, tmp_path):
    videos = tmp_path / "videos"
    requests = [{"id": "robot", "prompt": "a robot stacks cubes"},
                {"id": "dog", "prompt": "a dog runs", "sampling": {"seed": 3}}]
    run = harness.play(
        service_task(arch="cosmos-predict2.5", model="hf_model://nvidia/Cosmos-Predict2.5-2B",
                     extra='env: {TAO_EMULATOR_LOAD_SECONDS: "0"}')
        + batch_task("Videos", requests, {"output_dir": str(videos)})
        + """\
- name: One video
  tao.inference.tao_inference_request:
    job_id: "{{ svc.job_id }}"
    prompt: a cat sleeps
    sampling: {}
    output_dir: %s
  register: one
""" % videos)
    result = run.task("Videos")["result"]
    assert [r["content_path"] for r in result["results"]] == [str(videos / "robot.mp4"), str(videos / "dog.mp4")]
    assert [r["content"] for r in result["results"]] == [None, None]
    assert run.task("Videos")["status"] == "changed"
    data = (videos / "dog.mp4").read_bytes()
    assert data[4:8] == b"ftyp" and b"prompt='a dog runs'" in data and b"seed=3" in data
    one = run.task("One video")["result"]
    assert one["content"] is None and one["content_path"].startswith(str(videos) + "/")
    assert b"prompt='a cat sleeps'" in open(one["content_path"], "rb").read()
    assert sorted(os.listdir(str(videos))) == sorted(["robot.mp4", "dog.mp4", os.path.basename(one["content_path"])])


def test_evaluate_playbook_end_to_end(harness, tmp_path):
    shutil.copy(PNG, str(tmp_path / "frame.png"))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('id,prompt,media,expected\nred,"Is it red, or ""blue""?",frame.png,red\n'
                       ',What shape?,frame.png,\nbroken,Bad media,"%s",\n' % BAD_PNG)
    start = harness.play(service_task(extra='name: evaluated\nenv: {TAO_EMULATOR_LOAD_SECONDS: "0"}'))
    assert start.rc == 0, start.output

    run = harness.playbook(EVALUATE, {"tao_prompts_file": str(prompts), "tao_sampling": {"max_tokens": 16}})
    assert run.rc == 0, run.output
    out = run.stdout
    assert "Sent 3 prompts to job_id=" in out and "arch=cosmos-rl" in out
    assert "Sampling: max_tokens 16 (given), temperature 0.7 (default), top_p 0.8 (default)" in out
    assert "ok 2, failed 1;" in out and "requests/s" in out
    assert "Failed broken: the service rejected the request as invalid" in out
    results = tmp_path / "prompts.results.jsonl"
    assert "Results: %s" % results in out
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["red", "1", "broken"]
    assert "answered 'Is it red, or \"blue\"?' with 1 image(s)" in lines[0]["content"]
    assert "max_tokens=16" in lines[1]["content"] and lines[2]["error_type"] == "invalid_request"

    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"id": "a", "prompt": "first", "media": "frame.png"}\n'
                     '{"id": "b", "prompt": "second", "media": ["frame.png"], "sampling": {"max_tokens": 8}}\n')
    elsewhere = tmp_path / "out" / "answers.jsonl"
    unasked = harness.playbook(EVALUATE, {"tao_prompts_file": str(jsonl), "tao_name": "evaluated",
                                          "tao_output_path": str(elsewhere)})
    # Without sampling and without a terminal, no default is taken silently, and nothing is sent.
    assert unasked.rc != 0 and "Set tao_sampling: the sampling values for cosmos-rl" in unasked.output
    assert not elsewhere.exists()
    asked = harness.playbook(EVALUATE, {"tao_prompts_file": str(jsonl), "tao_name": "evaluated",
                                        "tao_output_path": str(elsewhere), "tao_concurrency": 2, "tao_sampling": {}})
    assert asked.rc == 0, asked.output
    assert "Sampling: max_tokens 1024 (default)" in asked.stdout and "ok 2, failed 0;" in asked.stdout
    lines = [json.loads(line) for line in elsewhere.read_text().splitlines()]
    assert "max_tokens=1024" in lines[0]["content"] and "max_tokens=8" in lines[1]["content"]

    missing = harness.playbook(EVALUATE)
    assert missing.rc != 0 and "Set tao_prompts_file" in missing.output


def _descendants(root, marker):
    """Pids of processes below ``root`` whose command line holds ``marker``."""
    parents, cmdlines = {}, {}
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                parents[pid] = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                cmdlines[pid] = handle.read()
        except (OSError, ValueError, IndexError):
            continue
    found = []
    for pid, cmdline in cmdlines.items():
        up = pid
        while up in parents and up not in (0, 1, root):
            up = parents[up]
        if up == root and marker in cmdline:
            found.append(pid)
    return found


def test_a_batch_killed_mid_way_keeps_its_answers_and_a_resume_answers_each_item_once(harness, tmp_path):
    import signal
    import time

    answers = tmp_path / "answers.jsonl"
    start = harness.play(service_task(extra='name: resumable\nenv: {TAO_EMULATOR_LOAD_SECONDS: "0", '
                                            'TAO_EMULATOR_RESPONSE_MS: "400"}'))
    assert start.rc == 0, start.output
    job_id = start.task("Start")["result"]["job_id"]
    requests = [{"id": "item-%02d" % i, "prompt": "prompt %d" % i, "media": PNG} for i in range(12)]
    args = {"job_id": job_id, "sampling": {}, "requests": requests, "concurrency": 2,
            "output_path": str(answers)}
    play = "- name: Batch\n  tao.inference.tao_inference_request: %s\n  register: out\n" % json.dumps(args)

    proc = harness.spawn(play)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once a few answers are on disk, well before the end
        if answers.exists() and len(answers.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    # The hardest cut: the module process itself is killed (it runs in a session of its own), then the run.
    modules = _descendants(proc.pid, b"AnsiballZ_tao_inference_request")
    assert modules, "the batch's module process was not found"
    for pid in modules:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    harness.finish(proc)
    kept = [json.loads(line) for line in answers.read_text().splitlines() if line.endswith("}")]
    assert 4 <= len(kept) < 12 and all(line["status"] == "ok" for line in kept)

    args["resume"] = True
    host_url = start.task("Start")["result"]["host_url"]
    resumed = harness.play(
        "- name: Stats before\n  ansible.builtin.uri: {url: '%s/emulator/stats', return_content: true}\n" % host_url
        + "- name: Resume\n  tao.inference.tao_inference_request: %s\n  register: out\n" % json.dumps(args)
        + "- name: Stop\n  tao.inference.tao_inference_service: {state: absent, name: resumable}\n")
    assert resumed.rc == 0, resumed.output
    result = resumed.task("Resume")["result"]
    assert result["summary"]["resumed"] == len(kept) and result["summary"]["ok"] == 12
    sent = [r["id"] for r in result["results"] if not r.get("resumed")]
    assert sorted(sent + [line["id"] for line in kept]) == [r["id"] for r in requests]  # each item once
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in requests]
    assert all("answered 'prompt %d'" % i in line["content"] for i, line in enumerate(lines))
    # The server saw each item once, but for the (at most 2) that were in flight when the run was killed.
    served = resumed.task("Stats before")["result"]["json"]["requests"] + len(sent)
    assert 12 <= served <= 12 + 2
