"""Requests across a fleet's view: routed to one service by job_id, name or arch, or a batch spread
over every service of an arch, each its share and its own concurrency bound (in-process services)."""

import uuid

import pytest

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.chat import ask as ask_module
from ansible_collections.tao.inference.plugins.module_utils.chat.ask import ask
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

from .test_batch import emulator_fixture, png_fixture  # noqa: F401  # pylint: disable=unused-import


def jid(name):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def row(name, host, emu, arch="cosmos-rl", state="running"):
    return {"host": host, "job_id": jid(name), "name": name, "network_arch": arch, "state": state,
            "host_url": "http://localhost:8080", "controller_url": emu.base if emu else None}


def params(**given):
    base = dict(job_id=None, name=None, network_arch=None, prompt=None, system_prompt=None, media=[],
                messages=None, requests=None, requests_file=None, concurrency=2, deadline=None,
                fail_on_item_error=False, return_content_max=None, output_path=None, resume=False,
                output_dir=None, sampling={}, timeout=30, wait_timeout=10, fleet=None, spread=False)
    base.update(given)
    return base


def test_one_request_routed_by_name_to_its_host(emulator, png):
    one, two = emulator(), emulator()
    fleet = [row("a", "gpu1", one), row("b", "gpu2", two)]
    result = ask(None, params(fleet=fleet, name="b", prompt="hello", media=[png]))
    assert result["host"] == "gpu2" and result["controller_url"] == two.base and result["job_id"] == jid("b")
    assert two.stats()["requests"] == 1 and one.stats()["requests"] == 0


def test_ambiguity_lists_every_candidate_with_its_host(emulator, png):
    one, two = emulator(), emulator()
    fleet = [row("a", "gpu1", one), row("b", "gpu2", two), {"host": "gpu3", "state": "unreachable", "job_id": None}]
    with pytest.raises(TaoInferenceError) as err:
        ask(None, params(fleet=fleet, network_arch="cosmos-rl", prompt="hello", media=[png]))
    assert "on gpu1" in err.value.msg and "on gpu2" in err.value.msg and "gpu3" not in err.value.msg
    assert one.stats()["requests"] == 0 and two.stats()["requests"] == 0


def test_spread_gives_each_service_its_share_within_its_bound(emulator, png):
    one, two = emulator(response_ms=100), emulator(response_ms=100)
    fleet = [row("a", "gpu1", one), row("b", "gpu2", two), row("gone", "gpu3", None, state="exited"),
             row("d", "gpu2", None, arch="tao-dataservices")]
    requests = [{"id": "q%d" % i, "prompt": "p%d" % i, "media": [png]} for i in range(10)]
    result = ask(None, params(fleet=fleet, network_arch="cosmos-rl", spread=True, requests=requests, concurrency=2))
    assert [r["id"] for r in result["results"]] == ["q%d" % i for i in range(10)]
    assert all(r["status"] == "ok" for r in result["results"])
    assert [r["host"] for r in result["results"][:4]] == ["gpu1", "gpu2", "gpu1", "gpu2"]
    assert sorted(s["job_id"] for s in result["services"]) == sorted([jid("a"), jid("b")])
    assert [(s["host"], s["total"], s["ok"]) for s in result["summary"]["services"]] == [("gpu1", 5, 5), ("gpu2", 5, 5)]
    for emu in (one, two):
        stats = emu.stats()
        assert stats["requests"] == 5 and stats["max_in_flight"] <= 2


def test_spread_needs_a_fleet_an_arch_and_a_batch(emulator, png):
    emu = emulator()
    fleet = [row("a", "gpu1", emu)]
    for bad in (params(spread=True, network_arch="cosmos-rl", requests=[{"prompt": "p", "media": [png]}]),
                params(fleet=fleet, spread=True, network_arch="cosmos-rl", prompt="p", media=[png]),
                params(fleet=fleet, spread=True, requests=[{"prompt": "p", "media": [png]}])):
        with pytest.raises(TaoInferenceError):
            ask(None, bad)
    assert emu.stats()["requests"] == 0


def test_a_forged_view_sends_nothing(emulator, png):
    emu = emulator()
    forged = [dict(row("a", "gpu1", emu), controller_url="http://$(id):80")]
    with pytest.raises(TaoInferenceError):
        ask(None, params(fleet=forged, name="a", prompt="p", media=[png]))
    assert emu.stats()["requests"] == 0


def token_row(name, host, emu, token, bound_token=None):
    """A Lepton-like service on ``emu`` whose endpoint takes ``bound_token`` (``token`` unless given)."""
    bound = readiness.endpoint_auth(jid(name), emu.base, "LEPTON_ENDPOINT_TOKEN", bound_token or token)
    return dict(row(name, host, emu), platform="lepton", host_url=emu.base, controller_url=emu.base,
                forwarded=False, endpoint_auth=bound)


def test_a_spread_gives_each_service_its_own_headers_and_leaves_out_one_whose_token_cannot_go(
        emulator, png, monkeypatch):
    plain, tokened, other = emulator(), emulator(), emulator()
    monkeypatch.setenv("LEPTON_ENDPOINT_TOKEN", "endpoint-token-1")
    fleet = [row("a", "gpu1", plain), token_row("b", "gpu2", tokened, "endpoint-token-1"),
             token_row("c", "gpu3", other, "endpoint-token-1", bound_token="another-token")]
    seen, warnings = [], []
    real = ask_module.batch.run

    def spy(url, *args, **kwargs):
        seen.extend((target.tags["job_id"], target.headers) for target in url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(ask_module.batch, "run", spy)
    requests = [{"id": "q%d" % i, "prompt": "p%d" % i, "media": [png]} for i in range(4)]
    result = ask(None, params(fleet=fleet, network_arch="cosmos-rl", spread=True, requests=requests),
                 warn=warnings.append)
    assert sorted(seen, key=lambda s: s[0]) == sorted([
        (jid("a"), None), (jid("b"), {"Authorization": "Bearer endpoint-token-1"})], key=lambda s: s[0])
    assert [s["job_id"] for s in result["services"]] == [jid("a"), jid("b")]
    assert [(o["job_id"], o["host"]) for o in result["left_out"]] == [(jid("c"), "gpu3")]
    assert "is not the one service" in result["left_out"][0]["reason"] and "left out" in warnings[-1]
    assert result["summary"]["ok"] == 4 and other.stats()["requests"] == 0
    assert "endpoint-token-1" not in repr(result) + repr(warnings)

    monkeypatch.delenv("LEPTON_ENDPOINT_TOKEN")
    with pytest.raises(TaoInferenceError) as err:
        ask(None, params(fleet=fleet[1:], network_arch="cosmos-rl", spread=True, requests=requests))
    assert "no cosmos-rl service of the fleet can take this batch" in err.value.msg
    assert tokened.stats()["requests"] == 2 and other.stats()["requests"] == 0
