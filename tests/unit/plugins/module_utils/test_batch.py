"""The batch engine against the reference microservice, run in-process on 127.0.0.1."""

import collections
import io
import json
import os
import socket
import stat
import sys
import threading
import urllib.request

import pytest

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.chat import batch
from ansible_collections.tao.inference.plugins.module_utils.chat.media import STREAM_CHUNK, MediaStore
from ansible_collections.tao.inference.plugins.module_utils.chat.messages import build_body, build_messages
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

EMULATOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator")
sys.path.insert(0, os.path.abspath(EMULATOR_DIR))

# pylint: disable=wrong-import-position,import-error
from tao_emulator.server import make_server  # noqa: E402
from tao_emulator.service import EmulatorService, EventLog, JobConfig, Settings  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


class Emulator(object):
    """An in-process reference microservice on 127.0.0.1 (a free port)."""

    def __init__(self, flavor, settings):
        job = JobConfig(flavor=flavor, entrypoint="test", model_path="hf_model://org/model", job_id="job-1")
        self.service = EmulatorService(job, settings, environ={}, log=EventLog(io.StringIO()))
        self.server = make_server(self.service, "127.0.0.1", 0)
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.url = self.base + "/v1/chat/completions"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.service.start_loading()

    def stats(self):
        with urllib.request.urlopen(self.base + "/emulator/stats", timeout=5) as response:
            return json.loads(response.read())

    def close(self):
        self.service.stop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(name="emulator")
def emulator_fixture():
    running = []

    def start(flavor="cosmos-rl", load_seconds=0.0, load_fail=None, response_ms=0.0, wait=True):
        emu = Emulator(flavor, Settings(load_seconds=load_seconds, load_fail=load_fail, response_ms=response_ms,
                                        host="127.0.0.1"))
        running.append(emu)
        if wait:
            assert readiness.wait_ready(emu.base, 10).state in (readiness.READY, readiness.FATAL)
        return emu

    yield start
    for emu in running:
        emu.close()


@pytest.fixture(name="png")
def png_fixture(tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(PNG)
    return str(path)


def run(emu, requests, sampling=None, arch="cosmos-rl", **options):
    return batch.run(emu.url, arch, requests, {} if sampling is None else sampling, batch.Options(**options))


def test_results_in_input_order_with_ids_errors_summary_and_the_concurrency_bound(emulator, png):
    emu = emulator(response_ms=150)
    requests = [{"id": "q%d" % i, "prompt": "prompt %d" % i, "media": [png]} for i in range(5)]
    # Valid for the collection, refused by the server at once (bad base64): it finishes first.
    requests.append({"id": "bad", "prompt": "broken", "media": ["data:image/png;base64,A"]})
    outcome = run(emu, requests, concurrency=3)
    results = outcome["results"]
    assert [r["id"] for r in results] == ["q0", "q1", "q2", "q3", "q4", "bad"]
    for index, result in enumerate(results[:5]):
        assert result["status"] == "ok" and result["http_status"] == 200 and result["finish_reason"] == "stop"
        assert "answered 'prompt %d' with 1 image(s)" % index in result["content"]
        assert result["elapsed"] >= 0.15 and result["attempts"] == 1 and result["error"] is None
    bad = results[5]
    assert (bad["status"], bad["http_status"], bad["error_type"]) == ("failed", 400, "invalid_request")
    assert "Invalid base64" in bad["error"] and bad["content"] is None
    summary = outcome["summary"]
    assert (summary["total"], summary["ok"], summary["failed"], summary["attempts"]) == (6, 5, 1, 6)
    assert 0.15 <= summary["latency_p50"] <= summary["latency_p95"] and summary["requests_per_second"] > 0
    assert summary["max_rss_mib"] > 10 and outcome["changed"] is False
    stats = emu.stats()
    assert stats["requests"] == 6 and stats["max_in_flight"] == 3


def test_fail_on_item_error_fails_naming_the_item_after_every_item_is_done(emulator, png):
    emu = emulator()
    requests = [{"id": "fine", "prompt": "p", "media": png},
                {"id": "broken", "prompt": "p", "media": "data:image/png;base64,A"}]
    with pytest.raises(TaoInferenceError) as err:
        run(emu, requests, fail_on_item_error=True)
    assert "1 of 2 requests failed; the first, request broken: the service rejected" in err.value.msg
    assert [r["status"] for r in err.value.details["results"]] == ["ok", "failed"]
    assert err.value.details["summary"]["failed"] == 1


def test_every_item_is_checked_before_anything_is_sent(emulator, png, tmp_path):
    emu = emulator()
    big = tmp_path / "big.mp4"
    with open(str(big), "wb") as handle:
        handle.truncate((512 << 20) + 1)  # sparse: 512 MiB and one byte
    requests = [
        {"id": "fine", "prompt": "p", "media": [png]},
        {"id": "wrong-arch", "prompt": "p", "media": [png], "sampling": {"guidance": 3}},
        {"id": "no-media", "prompt": "p"},
        {"id": "gif", "prompt": "p", "media": ["https://example.invalid/a.gif"]},
        {"id": "cloud", "prompt": "p", "media": ["s3://bucket/a.png"]},
        {"id": "big", "prompt": "p", "media": [str(big)]},
        {"id": "fine", "prompt": "again", "media": [png]},
        {"prompt": "p", "media": [png], "temperature": 0.3},
    ]
    with pytest.raises(TaoInferenceError) as err:
        run(emu, requests)
    msg = err.value.msg
    assert msg.startswith("7 of 8 requests are invalid and nothing was sent: ")
    for expected in ("request wrong-arch: sampling.guidance belongs to cosmos-predict2.5",
                     "request no-media: cosmos-rl needs an image or a video",
                     "request gif: media https://example.invalid/a.gif has extension '.gif'",
                     "request cloud: media s3://bucket/a.png is a cloud URI",
                     "request big: media file %s is 512 MiB; the service accepts at most 512 MiB" % big,
                     "request fine: the id is also the id of request 0",
                     "request 7: unknown key temperature"):
        assert expected in msg
    assert sorted(bad["id"] for bad in err.value.details["invalid"]) == \
        ["7", "big", "cloud", "fine", "gif", "no-media", "wrong-arch"]
    assert emu.stats()["requests"] == 0


def test_item_sampling_is_merged_over_the_task_level_values(emulator, png):
    emu = emulator()
    requests = [{"id": "task", "prompt": "p", "media": png},
                {"id": "own", "prompt": "p", "media": png, "sampling": {"temperature": 0.1}},
                {"id": "reset", "prompt": "p", "media": png, "sampling": {"max_tokens": None}}]
    outcome = run(emu, requests, sampling={"max_tokens": 64})

    def applied(result):
        return dict((a["field"], (a["value"], a["default"])) for a in result["sampling_applied"])

    task, own, reset = outcome["results"]
    assert applied(task) == {"max_tokens": (64, False), "temperature": (0.7, True), "top_p": (0.8, True)}
    assert applied(own) == {"max_tokens": (64, False), "temperature": (0.1, False), "top_p": (0.8, True)}
    assert applied(reset)["max_tokens"] == (1024, True)
    assert "max_tokens=64 temperature=0.7" in task["content"]
    assert "max_tokens=64 temperature=0.1" in own["content"]
    assert "max_tokens=1024" in reset["content"]
    assert outcome["warnings"] == ["cosmos-rl ignores temperature; it was sent as given"]
    assert applied({"sampling_applied": outcome["sampling_applied"]}) == applied(task)  # the task level alone
    with pytest.raises(TaoInferenceError, match="accept every default"):
        batch.run(emu.url, "cosmos-rl", requests, None, batch.Options())
    with pytest.raises(TaoInferenceError, match="requests holds no request"):
        batch.run(emu.url, "cosmos-rl", [], {}, batch.Options())
    assert emu.stats()["requests"] == 3


def test_each_distinct_media_file_is_read_and_encoded_once_and_the_temp_files_go(emulator, png, tmp_path):
    emu = emulator()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(MP4)
    opened = collections.Counter()

    def opener(path, mode):
        opened[path] += 1
        return open(path, mode)

    spellings = [str(clip), "clip.mp4", "./clip.mp4", str(tmp_path / "sub" / ".." / "clip.mp4")]
    (tmp_path / "sub").mkdir()
    requests = [{"prompt": "video %d" % i, "media": [spelling]} for i, spelling in enumerate(spellings)]
    requests += [{"prompt": "image %d" % i, "media": [png]} for i in range(2)]
    requests.append({"prompt": "both", "media": [png, "clip.mp4"]})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    options = batch.Options(concurrency=3, base_dir=str(tmp_path), tmpdir=str(scratch))
    outcome = batch.run(emu.url, "cosmos-rl", requests, {}, options, opener=opener)
    assert opened == {str(clip): 1, png: 1}
    contents = [r["content"] for r in outcome["results"]]
    assert all("with 0 image(s), 1 video(s)" in c for c in contents[:4])
    assert all("with 1 image(s), 0 video(s)" in c for c in contents[4:6])
    assert "with 1 image(s), 1 video(s)" in contents[6]
    assert os.listdir(str(scratch)) == []


def test_the_streamed_body_is_the_single_request_body(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(os.urandom(STREAM_CHUNK * 2 + 12345))  # several chunks, not a multiple of 3
    messages = build_messages("cosmos-rl", "what?", "be brief", [str(clip)])
    expected, _applied, _warnings = build_body("cosmos-rl", messages, {"max_tokens": 9})

    with MediaStore(str(tmp_path)) as store:
        item = batch.check_items("cosmos-rl", [{"prompt": "what?", "system_prompt": "be brief", "media": [str(clip)]}],
                                 {"max_tokens": 9}, store, batch.Options())[0]
        content, headers = store.body(item.parts)
        chunks = list(content)
    body = b"".join(chunks)
    assert json.loads(body) == expected
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Content-Type"] == "application/json" and max(len(c) for c in chunks) <= STREAM_CHUNK


def test_temp_files_go_even_when_the_batch_breaks(emulator, png, tmp_path, monkeypatch):
    emu = emulator()
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def broken(*_args):
        raise RuntimeError("boom")

    monkeypatch.setattr(batch.Engine, "_answer", broken)
    with pytest.raises(RuntimeError, match="boom"):
        batch.run(emu.url, "cosmos-rl", [{"prompt": "p", "media": png}], {}, batch.Options(tmpdir=str(scratch)))
    assert os.listdir(str(scratch)) == []


def test_output_path_holds_every_full_answer_and_results_are_cut(emulator, png, tmp_path):
    emu = emulator()
    out = tmp_path / "new" / "folder" / "answers.jsonl"
    requests = [{"id": "a", "prompt": "first", "media": png}, {"id": "b", "prompt": "second", "media": png},
                {"id": "c", "prompt": "third", "media": "data:image/png;base64,A"}]
    outcome = run(emu, requests, return_content_max=12, output_path=str(out))
    assert outcome["changed"] is True
    shown = outcome["results"]
    assert [len(r["content"] or "") for r in shown] == [12, 12, 0]
    assert [r["content_truncated"] for r in shown] == [True, True, False]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["id"], line["prompt"], line["status"]) for line in lines] == \
        [("a", "first", "ok"), ("b", "second", "ok"), ("c", "third", "failed")]
    assert lines[0]["content"].startswith(shown[0]["content"]) and "answered 'first'" in lines[0]["content"]
    assert lines[2]["error_type"] == "invalid_request"
    assert run(emu, requests[:1], return_content_max=0)["results"][0]["content"] == ""


def test_data_uri_answers_are_saved_as_files_named_after_the_ids(emulator, tmp_path):
    emu = emulator(flavor="cosmos-predict2.5")
    videos = tmp_path / "videos"
    requests = [{"id": "robot/1", "prompt": "a robot"}, {"id": "robot_1", "prompt": "a dog"},
                {"id": "cat", "prompt": "a cat"}]
    outcome = run(emu, requests, arch="cosmos-predict2.5", output_dir=str(videos),
                  output_path=str(tmp_path / "answers.jsonl"))
    paths = [r["content_path"] for r in outcome["results"]]
    assert paths == [str(videos / "robot_1-0.mp4"), str(videos / "robot_1-1.mp4"), str(videos / "cat.mp4")]
    assert all(r["content"] is None and r["status"] == "ok" for r in outcome["results"])
    for path, prompt in zip(paths, ("a robot", "a dog", "a cat")):
        data = open(path, "rb").read()
        assert data[4:8] == b"ftyp" and ("prompt='%s'" % prompt).encode() in data
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [line["content_path"] for line in lines] == paths and lines[0]["content"] is None


def test_requests_are_retried_while_the_model_loads(emulator, png):
    emu = emulator(load_seconds=0.6, wait=False)
    outcome = run(emu, [{"prompt": "p%d" % i, "media": png} for i in range(3)], concurrency=3)
    assert [r["status"] for r in outcome["results"]] == ["ok"] * 3
    assert all(r["attempts"] > 1 for r in outcome["results"])
    assert outcome["summary"]["attempts"] > 3


def test_the_deadline_fails_what_is_late_and_sends_nothing_more(emulator, png):
    emu = emulator(response_ms=500)
    outcome = run(emu, [{"prompt": "p%d" % i, "media": png} for i in range(4)], concurrency=1, deadline=0.8)
    results = outcome["results"]
    assert results[0]["status"] == "ok"
    assert [r["error_type"] for r in results[1:]] == ["deadline"] * 3
    assert results[1]["attempts"] == 1 and "passed before the answer" in results[1]["error"]
    assert [r["attempts"] for r in results[2:]] == [0, 0] and "not sent" in results[2]["error"]
    assert outcome["summary"]["elapsed"] < 1.5
    assert emu.stats()["requests"] == 2


def test_a_failed_model_load_stops_the_batch(emulator, png):
    emu = emulator(load_fail="bad shard")
    outcome = run(emu, [{"id": str(i), "prompt": "p", "media": png} for i in range(6)], concurrency=2)
    results = outcome["results"]
    assert [r["error_type"] for r in results] == ["model_load_error"] * 6
    assert results[0]["http_status"] == 503 and "did not load" in results[0]["error"]
    # The second worker's item went out too unless the stop came first (a loaded machine): no more than two
    # were ever sent, and every other item says it was not sent.
    sent = [r for r in results if r["http_status"] == 503]
    assert len(sent) <= 2 and sent == results[:len(sent)]
    assert all(r["attempts"] == 0 and r["error"].startswith("not sent: ") for r in results[len(sent):])
    assert emu.stats()["requests"] == len(sent)


def test_an_unreachable_service_fails_each_item(png):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = "http://127.0.0.1:%d/v1/chat/completions" % port
    outcome = batch.run(url, "cosmos-rl", [{"prompt": "p", "media": png}], {}, batch.Options(wait_timeout=0.3))
    result = outcome["results"][0]
    assert (result["status"], result["error_type"], result["http_status"]) == ("failed", "unreachable", None)
    assert "cannot reach" in result["error"] and result["attempts"] >= 2


def test_requests_files_csv_and_jsonl(emulator, png, tmp_path):
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text('id,prompt,media,reference\nx1,"Is it red, or blue? Say ""red""",frame.png,red\n'
                        ',second,,\n', encoding="utf-8")
    assert batch.load_requests_file(str(csv_file)) == [
        {"id": "x1", "prompt": 'Is it red, or blue? Say "red"', "media": "frame.png"}, {"prompt": "second"}]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"id": 7, "prompt": "a", "media": ["frame.png"], "expected": "x"}\n\n'
                     '{"prompt": "b", "sampling": {"max_tokens": 5}}\n')
    assert batch.load_requests_file(str(jsonl)) == [
        {"id": 7, "prompt": "a", "media": ["frame.png"]}, {"prompt": "b", "sampling": {"max_tokens": 5}}]
    emu = emulator(flavor="tao-dataservices")
    outcome = batch.run(emu.url, "tao-dataservices", batch.load_requests_file(str(csv_file)), {},
                        batch.Options(base_dir=str(tmp_path)))
    assert [r["id"] for r in outcome["results"]] == ["x1", "1"]
    assert "with 1 image(s)" in outcome["results"][0]["content"]

    for name, text, message in [
            ("bad.jsonl", '{"prompt": "a"}\n{oops\n', "bad.jsonl line 2 is not JSON"),
            ("list.jsonl", '["a"]\n', "line 1 must be a JSON object"),
            ("empty.jsonl", "\n", "holds no request"),
            ("noprompt.csv", "id,text\n1,a\n", "has no prompt column (columns: id, text)"),
            ("prompts.txt", "a\n", "must end in .jsonl, .ndjson or .csv")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(TaoInferenceError, match=message.replace("(", r"\(").replace(")", r"\)")):
            batch.load_requests_file(str(tmp_path / name))


@pytest.mark.parametrize("options, message", [
    ({"concurrency": 0}, "concurrency must be between 1 and 256"),
    ({"concurrency": 257}, "concurrency must be between 1 and 256"),
    ({"deadline": 0}, "deadline must be a positive number"),
    ({"return_content_max": -1}, "return_content_max must be 0 or more"),
])
def test_options_are_checked(options, message):
    with pytest.raises(TaoInferenceError, match=message):
        batch.Options(**options)


def test_an_unwritable_output_folder_fails_before_anything_is_sent(emulator, png, tmp_path):
    emu = emulator()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TaoInferenceError, match="cannot create the output folder"):
        run(emu, [{"prompt": "p", "media": png}], output_dir=str(blocker / "videos"))
    assert emu.stats()["requests"] == 0


def test_each_answer_is_on_disk_as_it_arrives_and_a_resume_sends_only_the_rest(emulator, png, tmp_path):
    emu = emulator(response_ms=20)
    out = tmp_path / "answers.jsonl"
    requests = [{"id": "q%d" % i, "prompt": "prompt %d" % i, "media": png} for i in range(6)]
    seen = []
    original = batch.Engine._one

    def watching(engine, client, item):
        record = original(engine, client, item)
        # By the time an item is done, its line (and every earlier one) is in the file.
        seen.append(set(json.loads(line)["id"] for line in out.read_text().splitlines()))
        assert item.id in seen[-1]
        return record

    batch.Engine._one = watching
    try:
        run(emu, requests[:3], concurrency=1, output_path=str(out))
    finally:
        batch.Engine._one = original
    assert seen == [{"q0"}, {"q0", "q1"}, {"q0", "q1", "q2"}]
    # A run cut short mid-write left half a line; a changed prompt is not the same request.
    with open(str(out), "a") as handle:
        handle.write('{"id": "q3", "status": "ok", "prom')
    before = emu.stats()["requests"]
    requests[1]["prompt"] = "prompt 1, asked again"
    outcome = run(emu, requests, resume=True, output_path=str(out), concurrency=2)
    assert emu.stats()["requests"] - before == 4  # q1 (new prompt), q3, q4, q5
    assert [r.get("resumed", False) for r in outcome["results"]] == [True, False, True, False, False, False]
    assert outcome["summary"]["resumed"] == 2 and outcome["summary"]["ok"] == 6
    assert outcome["summary"]["attempts"] == 4 and outcome["changed"] is True
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["q%d" % i for i in range(6)]  # one per item, input order
    assert "answered 'prompt 1, asked again'" in lines[1]["content"] and "resumed" not in lines[0]
    # Everything answered: nothing is sent, nothing changes.
    again = run(emu, requests, resume=True, output_path=str(out))
    assert emu.stats()["requests"] - before == 4 and again["changed"] is False
    assert again["summary"]["resumed"] == 6 and again["summary"]["requests_per_second"] == 0
    # Without resume the file is started afresh.
    run(emu, requests[:1], output_path=str(out))
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["q0"]


def test_a_failed_item_is_sent_again_on_resume(emulator, png, tmp_path):
    emu = emulator()
    out = tmp_path / "answers.jsonl"
    out.write_text(json.dumps({"id": "a", "prompt": "p", "status": "failed", "error": "x"}) + "\n")
    outcome = run(emu, [{"id": "a", "prompt": "p", "media": png}], resume=True, output_path=str(out))
    assert outcome["summary"]["resumed"] == 0 and outcome["results"][0]["status"] == "ok"
    assert emu.stats()["requests"] == 1


@pytest.mark.parametrize("make, message", [
    ("symlink", "is a folder or a symbolic link"),
    ("folder", "is a folder or a symbolic link"),
    ("fifo", "is not a regular file"),
])
def test_hostile_output_paths_are_refused_before_anything_is_sent(emulator, png, tmp_path, make, message):
    emu = emulator()
    out = tmp_path / "answers.jsonl"
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    if make == "symlink":
        out.symlink_to(target)
    elif make == "folder":
        out.mkdir()
    else:
        os.mkfifo(str(out))
    for resume in (False, True):
        with pytest.raises(TaoInferenceError, match=message):
            run(emu, [{"prompt": "p", "media": png}], output_path=str(out), resume=resume)
    assert emu.stats()["requests"] == 0 and target.read_text() == "keep me\n"


def test_another_users_output_file_is_refused(emulator, png, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a file of another user needs root")
    emu = emulator()
    out = tmp_path / "answers.jsonl"
    out.write_text("theirs\n")
    os.chown(str(out), 65534, 65534)
    with pytest.raises(TaoInferenceError, match="belongs to .*, not to you"):
        run(emu, [{"prompt": "p", "media": png}], output_path=str(out), resume=True)
    assert out.read_text() == "theirs\n" and emu.stats()["requests"] == 0


def test_resume_needs_an_output_path():
    with pytest.raises(TaoInferenceError, match="resume needs output_path"):
        batch.Options(resume=True)


@pytest.mark.parametrize("resume", [False, True])
def test_a_private_output_file_stays_private(emulator, png, tmp_path, resume):
    # Answers may be confidential: the mode the user gave the file (or their umask gave a new one) is kept.
    emu = emulator()
    out = tmp_path / "answers.jsonl"
    out.write_text("")
    out.chmod(0o600)
    run(emu, [{"id": "a", "prompt": "p", "media": png}], resume=resume, output_path=str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.jsonl"
    old = os.umask(0o077)
    try:
        run(emu, [{"id": "a", "prompt": "p", "media": png}], output_path=str(fresh))
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
