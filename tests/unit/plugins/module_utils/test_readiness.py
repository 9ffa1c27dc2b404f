"""Readiness: both answer shapes, fail fast, back off, notice readiness quickly."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.readiness import FATAL, READY, WAITING, Probe, classify


@pytest.mark.parametrize("status, body, state, reason", [
    # The real server (CONTRACT §5/§8).
    (200, {"status": "ready", "message": "Model ready"}, READY, "ready"),
    (503, {"status": "not_ready", "reason": "server_initializing"}, WAITING, "server_initializing"),
    (503, {"status": "not_ready", "reason": "model_loading"}, WAITING, "model_loading"),
    (503, {"status": "not_ready", "reason": "model_not_loaded"}, WAITING, "model_not_loaded"),
    (503, {"status": "not_ready", "reason": "model_load_failed"}, FATAL, "model_load_failed"),
    (503, {"status": "not_ready", "reason": "initialization_failed"}, FATAL, "initialization_failed"),
    # The documented shape (seed).
    (202, {"error": {"type": "server_initializing"}}, WAITING, "server_initializing"),
    (202, {"error": {"type": "model_loading"}}, WAITING, "model_loading"),
    (503, {"error": {"type": "model_not_ready"}}, WAITING, "model_not_ready"),
    (503, {"error": {"type": "model_load_error", "message": "boom"}}, FATAL, "model_load_error"),
    (503, {"error": {"type": "initialization_error"}}, FATAL, "initialization_error"),
    # Anything else keeps waiting, with the status in the reason.
    (502, {}, WAITING, "http_502"),
    (503, {}, WAITING, "http_503"),
])
def test_classify(status, body, state, reason):
    probe = classify(status, body)
    assert (probe.state, probe.reason) == (state, reason)


class FakeClock(object):
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(probes, clock, cost=0.001):
    calls = []

    def probe_fn(url, timeout):
        calls.append(clock.now)
        clock.now += cost
        return probes[min(len(calls) - 1, len(probes) - 1)]

    return probe_fn, calls


def test_fatal_ends_the_wait_at_once():
    clock = FakeClock()
    probes = [Probe(WAITING, "unreachable"), Probe(WAITING, "model_loading"), Probe(FATAL, "model_load_failed")]
    probe_fn, calls = scripted(probes, clock)
    result = readiness.wait_ready("http://x", 600, 0.5, probe_fn=probe_fn, sleep=clock.sleep, clock=clock)
    assert result.reason == "model_load_failed" and len(calls) == 3 and clock.now < 1


def test_polls_start_fast_and_back_off_to_sleep_max():
    clock = FakeClock()
    probe_fn, _calls = scripted([Probe(WAITING, "model_loading")], clock, cost=0)
    result = readiness.wait_ready("http://x", 10, 0.5, probe_fn=probe_fn, sleep=clock.sleep, clock=clock)
    assert result.state == WAITING and clock.now == pytest.approx(10)
    assert clock.sleeps[:4] == pytest.approx([0.01, 0.012, 0.0144, 0.01728])
    assert max(clock.sleeps) == 0.5  # readiness is noticed within 0.5 s


def test_dead_container_is_fatal_and_changes_are_reported():
    clock = FakeClock()
    probe_fn, _calls = scripted([Probe(WAITING, "unreachable")], clock)
    seen = []
    dead = Probe(FATAL, "service_exited", "container exited (exit code 2)")
    asked = []

    def alive():
        asked.append(clock.now)
        return dead if len(asked) == 3 else None

    result = readiness.wait_ready("http://x", 60, 0.5, alive=alive,
                                  on_change=lambda p, t: seen.append(p.reason),
                                  probe_fn=probe_fn, sleep=clock.sleep, clock=clock)
    assert result is dead and seen == ["unreachable", "service_exited"]
    # the platform is asked at most every 0.25 s, not at every poll
    assert all(later - earlier >= 0.25 for earlier, later in zip(asked, asked[1:]))
    assert asked[-1] < 1.0


def test_probe_against_a_closed_port_keeps_waiting():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    probe = readiness.probe("http://127.0.0.1:%d" % port, timeout=1)
    assert probe.state == WAITING and probe.reason == "unreachable"
