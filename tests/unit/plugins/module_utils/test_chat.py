"""Requests: selection and routing tables, sampling policy table, media checks, the send loop."""

import base64

import httpx
import pytest

from ansible_collections.tao.inference.plugins.module_utils.chat.messages import build_body, build_messages
from ansible_collections.tao.inference.plugins.module_utils.chat.routing import resolve_target, select
from ansible_collections.tao.inference.plugins.module_utils.chat.sampling import apply_sampling
from ansible_collections.tao.inference.plugins.module_utils.chat.sending import JSON_HEADERS, Retry, send
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import RegistryState


def u(letter):
    """A job_id (job_ids are UUIDs) ending in ``letter``."""
    return "00000000-0000-4000-8000-00000000000" + letter


def state_of(*entries):
    data = {}
    for job_id, arch, started in entries:
        job_id = u(job_id)
        data[job_id] = {"job_id": job_id, "network_arch": arch, "started_at": started,
                        "host_url": "http://localhost:%d" % (8080 + len(data)), "platform": "local-docker"}
    if entries:
        data["latest"] = u(entries[-1][0])
    return RegistryState(data, "/tmp/reg.json")


ONE = state_of(("a", "cosmos-rl", "1"))
TWO_RL = state_of(("a", "cosmos-rl", "1"), ("b", "cosmos-rl", "2"), ("c", "tao-dataservices", "3"))


@pytest.mark.parametrize("state, kwargs, expected", [
    (ONE, {}, "a"),
    (ONE, {"job_id": "a"}, "a"),
    (TWO_RL, {"job_id": "b"}, "b"),
    (TWO_RL, {"job_id": "latest"}, "c"),
    (TWO_RL, {"network_arch": "tao-dataservices"}, "c"),
])
def test_routing_picks(state, kwargs, expected):
    kwargs = dict((k, u(v) if k == "job_id" and v != "latest" else v) for k, v in kwargs.items())
    assert resolve_target(state, **kwargs)["job_id"] == u(expected)


@pytest.mark.parametrize("state, kwargs, message, candidates", [
    (TWO_RL, {}, "3 services are running and none was chosen", ["a", "b", "c"]),
    (TWO_RL, {"network_arch": "cosmos-rl"}, "2 cosmos-rl services are running", ["a", "b"]),
    (TWO_RL, {"network_arch": "cosmos-predict2.5"}, "no cosmos-predict2.5 service is running", ["a", "b", "c"]),
    (TWO_RL, {"job_id": u("d")}, "no service with job_id %s" % u("d"), ["a", "b", "c"]),
    (state_of(), {}, "no service is running", None),
])
def test_routing_refuses_to_guess(state, kwargs, message, candidates):
    with pytest.raises(TaoInferenceError) as err:
        resolve_target(state, **kwargs)
    assert message in err.value.msg
    if candidates is not None:
        assert [c["job_id"] for c in err.value.details["candidates"]] == [u(c) for c in candidates]
        for job_id in candidates:  # the message lists job_id, arch, url and start time
            assert u(job_id) in err.value.msg
        assert "http://localhost:" in err.value.msg and "started" in err.value.msg


def test_select_takes_latest_only_when_given_and_a_name_newest_first():
    named = state_of(("a", "cosmos-rl", "1"), ("b", "cosmos-rl", "2"), ("c", "tao-dataservices", "3"))
    for letter, name in (("a", "svc"), ("b", "other"), ("c", "svc")):
        named.data[u(letter)]["name"] = name

    def ids(entries):
        return [e["job_id"] for e in entries]

    assert ids(select(TWO_RL, job_id="latest")) == [u("c")]
    assert ids(select(TWO_RL, job_id=u("a"))) == [u("a")]
    assert ids(select(named, name="svc")) == [u("c"), u("a")]
    assert ids(select(TWO_RL)) == [u("c"), u("b"), u("a")]
    assert select(TWO_RL, job_id=u("d")) == [] and select(named, name="nobody") == []
    assert select(state_of(), job_id="latest") == [] and select(state_of()) == []
    select(TWO_RL, job_id=u("a"))[0]["network_arch"] = "changed"  # a copy: the state is untouched
    assert TWO_RL.get(u("a"))["network_arch"] == "cosmos-rl"
    with pytest.raises(TaoInferenceError, match="job_id 'latest' was given but the registry"):
        resolve_target(state_of(), job_id="latest")


def applied(arch, sampling):
    _body, result, warnings = apply_sampling(arch, sampling)
    return dict((a["field"], (a["value"], a["default"])) for a in result), warnings


@pytest.mark.parametrize("arch, sampling, expected", [
    ("cosmos-rl", {}, {"max_tokens": (1024, True), "top_p": (0.8, True), "temperature": (0.7, True)}),
    ("cosmos-rl", {"max_tokens": "256", "temperature": ""},
     {"max_tokens": (256, False), "top_p": (0.8, True), "temperature": (0.7, True)}),
    ("tao-dataservices", {"temperature": 0}, {"max_tokens": (1024, True), "top_p": (0.8, True),
                                              "temperature": (0.0, False)}),
    ("cosmos-predict2.5", {"guidance": 5, "seed": None},
     {"max_tokens": (77, True), "guidance": (5.0, False), "num_steps": (35, True), "seed": (0, True),
      "negative_prompt": ("", True)}),
])
def test_sampling_policy(arch, sampling, expected):
    assert applied(arch, sampling)[0] == expected


def test_server_ignored_fields_warn_when_set():
    _applied, warnings = applied("cosmos-rl", {"temperature": 0.1})
    assert warnings == ["cosmos-rl ignores temperature; it was sent as given"]
    assert applied("cosmos-rl", {})[1] == []


@pytest.mark.parametrize("arch, sampling, message", [
    ("cosmos-rl", {"guidance": 3}, "sampling.guidance belongs to cosmos-predict2.5, but the chosen service runs cosmos-rl"),
    ("cosmos-predict2.5", {"temperature": 0.5}, "sampling.temperature is not supported by cosmos-predict2.5"),
    ("cosmos-predict2.5", {"top_p": 0.5}, "not supported by cosmos-predict2.5"),
    ("cosmos-rl", {"temprature": 0.5}, "not a sampling field"),
    ("cosmos-rl", {"temperature": 2.5}, "outside 0.0..2.0"),
    ("cosmos-rl", {"max_tokens": "many"}, "must be a whole number"),
    ("cosmos-rl", {"max_tokens": 1.5}, "must be a whole number"),
    ("cosmos-predict2.5", {"guidance": 9}, "outside 0.0..7.0"),
])
def test_sampling_refusals(arch, sampling, message):
    with pytest.raises(TaoInferenceError) as err:
        apply_sampling(arch, sampling)
    assert message in err.value.msg


def test_sampling_must_be_given_explicitly():
    with pytest.raises(TaoInferenceError, match="accept every default"):
        apply_sampling("cosmos-rl", None)


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_local_media_becomes_a_data_uri(tmp_path):
    image = tmp_path / "frame.PNG"
    image.write_bytes(PNG)
    messages = build_messages("cosmos-rl", prompt="what?", media=[str(image)], system_prompt="be brief")
    assert messages[0] == {"role": "system", "content": "be brief"}
    item = messages[1]["content"][0]
    assert item["type"] == "image_url"
    assert item["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert messages[1]["content"][1] == {"type": "text", "text": "what?"}


@pytest.mark.parametrize("arch, media, message", [
    ("cosmos-rl", [], "cosmos-rl needs an image or a video"),
    ("cosmos-rl", ["s3://bucket/a.png"], "cloud URI"),
    ("cosmos-rl", ["https://example.invalid/a.gif"], "extension '.gif', which cosmos-rl does not accept"),
    ("cosmos-rl", ["data:image/gif;base64,AAAA"], "MIME type image/gif, which cosmos-rl does not accept"),
    ("cosmos-predict2.5", ["https://example.invalid/a.mkv"], "does not accept"),
    ("cosmos-rl", ["/nonexistent/a.png"], "does not exist"),
    ("cosmos-rl", ["ftp://x/a.png"], "unknown scheme"),
])
def test_media_refusals(arch, media, message):
    with pytest.raises(TaoInferenceError) as err:
        build_messages(arch, prompt="p", media=media)
    assert message in err.value.msg


def test_urls_pass_through_and_predict_infers_the_type():
    messages = build_messages("cosmos-predict2.5", prompt="p", media=["https://h.invalid/v.mp4"])
    body, _applied, _w = build_body("cosmos-predict2.5", messages, {})
    assert body["inference_type"] == "video2world"
    assert messages[0]["content"][0] == {"type": "video_url", "video_url": {"url": "https://h.invalid/v.mp4"}}
    text_only = build_messages("cosmos-predict2.5", prompt="p")
    assert build_body("cosmos-predict2.5", text_only, {})[0]["inference_type"] == "text2world"
    assert "inference_type" not in build_body("tao-dataservices", text_only, {})[0]


def test_raw_messages_are_checked_too():
    with pytest.raises(TaoInferenceError, match="needs an image or a video"):
        build_messages("cosmos-rl", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(TaoInferenceError, match="no user message"):
        build_messages("tao-dataservices", messages=[{"role": "system", "content": "x"}])
    with pytest.raises(TaoInferenceError, match="not both"):
        build_messages("tao-dataservices", prompt="x", messages=[{"role": "user", "content": "x"}])


def test_each_arch_gets_the_mime_spelling_its_server_accepts(tmp_path):
    clip = tmp_path / "clip.mov"
    clip.write_bytes(b"\0\0\0\x14ftypqt  ")
    dataservices = build_messages("tao-dataservices", prompt="p", media=[str(clip)])
    assert dataservices[0]["content"][0]["video_url"]["url"].startswith("data:video/mov;base64,")
    rl = build_messages("cosmos-rl", prompt="p", media=[str(clip)])
    assert rl[0]["content"][0]["video_url"]["url"].startswith("data:video/quicktime;base64,")
    with pytest.raises(TaoInferenceError, match="video/quicktime, which tao-dataservices does not accept"):
        build_messages("tao-dataservices", prompt="p", media=["data:video/quicktime;base64,AAAA"])


class FakeClient(object):
    """Answers each post with the next of ``answers`` (an exception is raised)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.posts = []

    def post(self, url, content, headers, timeout):
        self.posts.append((url, content, headers, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


ANSWER = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
LOADING = {"error": {"type": "model_not_ready", "message": "loading"}}


def test_the_send_loop_retries_refusals_and_loading_answers():
    client = FakeClient(httpx.ConnectError("refused"), httpx.Response(202, json=LOADING),
                        httpx.Response(503, json=LOADING), httpx.Response(200, json=ANSWER))
    pauses = []
    retry = Retry("http://svc/v1/chat/completions", 60)
    assert send(client, retry, b"{}", 5.0, pauses.append) == (200, ANSWER)
    assert retry.attempts == 4 and pauses == [0.25, 0.5, 1.0]
    assert client.posts == [("http://svc/v1/chat/completions", b"{}", JSON_HEADERS, 5.0)] * 4


def test_the_send_loop_takes_the_batch_hooks():
    bodies = []

    def body():
        bodies.append(len(bodies))
        return iter([b"{}"]), {"Content-Length": "2"}

    client = FakeClient(httpx.Response(202, json=LOADING), httpx.ReadTimeout("slow"))
    retry = Retry("http://svc/v1/chat/completions", 60)
    late = TaoInferenceError("the batch deadline passed", error_type="deadline")
    with pytest.raises(TaoInferenceError, match="deadline passed"):
        send(client, retry, body, lambda: 0.5, lambda seconds: None, lambda: late)
    assert retry.attempts == 2 and bodies == [0, 1] and [p[3] for p in client.posts] == [0.5, 0.5]

    def give_up(seconds):
        raise late

    retry = Retry("http://svc/v1/chat/completions", 60)
    with pytest.raises(TaoInferenceError, match="deadline passed"):
        send(FakeClient(httpx.ConnectError("refused")), retry, b"{}", 5.0, give_up)
    assert retry.attempts == 1
    with pytest.raises(TaoInferenceError, match="did not answer .* within 5.0 s") as err:
        send(FakeClient(httpx.ReadTimeout("slow")), Retry("http://svc/v1/chat/completions", 60), b"{}", 5.0)
    assert err.value.details["error_type"] == "timeout"


def test_a_token_over_plain_http_never_goes_through_a_proxy():
    from ansible_collections.tao.inference.plugins.module_utils.chat.sending import proxies_allowed

    token = {"Authorization": "Bearer t"}
    assert not proxies_allowed("http://127.0.0.1:8080/v1/chat/completions", token)
    assert proxies_allowed("https://svc.example/v1/chat/completions", token)
    assert proxies_allowed("http://127.0.0.1:8080/v1/chat/completions", {})
